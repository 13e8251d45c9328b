"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), as tensors, for the examples."""

from __future__ import annotations

import torch


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, batch_dim: int = 0):
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = perm[: int(0.8 * len(y))], perm[int(0.8 * len(y)) :]
    return x.index_select(batch_dim, train), y[train], x.index_select(batch_dim, test), y[test]


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target, dtype=torch.long)


def load_digits_tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train [N, 64], y_train [N], x_test, y_test)``: intensities in [0, 1], a seeded 80/20 split."""
    x, y = _digits()
    return _split(x, y, seed)


def load_digit_rows(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same split with each image as a sequence of its rows: ``x`` is ``[8 rows, N, 8 pixels]``."""
    x, y = _digits()
    return _split(x.view(-1, 8, 8).transpose(0, 1), y, seed, batch_dim=1)
