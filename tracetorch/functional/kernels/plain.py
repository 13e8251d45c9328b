"""The plain step loop of one kernel call: the reference the kernels are checked against.

:func:`plain_scan` takes exactly what ``tracetorch::neuron_scan`` takes (flat params with their
layout, the seed) and runs the functional core's own ``_generic_step`` over time with torch ops,
so it is differentiable to any order by torch's autograd. For the random quantizers it fires on
the kernels' own draws (the counter hash of :func:`.ops.uniform_draws`), so it computes the same
function as the kernel, draw for draw. The kernels use it to differentiate their backward (second
derivatives: a gradient penalty through the default path), and kernel checks compare against it.
"""

from __future__ import annotations

import torch

from .. import spikes
from ..neurons import _generic_step, spec_from_key

__all__ = ["expand_params", "plain_scan", "plain_scan_elements"]


def expand_params(params: list[torch.Tensor], layout: list[int], S: int) -> list[torch.Tensor]:
    """Flat kernel params ``[n_k]`` as per-element tensors ``[S]``: element ``i`` reads
    ``params[k][(i // inner_k) % n_k]`` with ``layout = [n_0, inner_0, ...]`` (differentiable)."""
    out = []
    for k, p in enumerate(params):
        n, inner = layout[2 * k], layout[2 * k + 1]
        out.append(p.reshape(1, n, 1).expand(S // (n * inner), n, inner).reshape(S))
    return out


class _KernelDraws:
    """The kernels' quantizer, in torch ops: call ``k`` of a step is draw site ``k``."""

    def __init__(self, quant: str, draws: torch.Tensor | None) -> None:
        self.quant, self.draws, self.t, self.site = quant, draws, 0, 0

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        if self.quant == "round":
            return spikes.round_st(p)
        if self.draws is None or self.site >= self.draws.shape[1]:
            raise RuntimeError(
                f"tracetorch kernels: the step called its quantizer more than {self.draws.shape[1]} times"
            )
        noise = self.draws[self.t, self.site].to(p.dtype)
        self.site += 1
        if self.quant == "bernoulli":
            return spikes.bernoulli_from_noise(p, noise)
        return spikes.probabilistic_from_noise(p, noise)


def plain_scan_elements(
    kind: str,
    spike: str,
    quant: str,
    xs: torch.Tensor,
    state: list[torch.Tensor],
    params: list[torch.Tensor],
    seed: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`plain_scan` with per-element params ``[S]`` (see :func:`expand_params`)."""
    from .ops import _spike_from_tag, get_kernel, uniform_draws

    if kind.startswith("custom:"):  # a user's step: run it, as traced (see .custom)
        from .custom import plain_elements

        return plain_elements(kind, quant, xs, state, params)
    spec = spec_from_key(kind)
    T, S = xs.shape
    draws = None
    if quant in ("bernoulli", "probabilistic"):
        sites = max(1, get_kernel(kind, spike, quant).traced.graph.quant_sites)
        draws = uniform_draws(seed, T, S, sites).to(xs.device)
    quantizer = _KernelDraws(quant, draws)
    spike_fn = _spike_from_tag(spike) if spec.fires else spikes.sigmoid4x
    p, s = spec.Params(*params), spec.State(*state)
    ys = []
    for t, x in enumerate(xs.unbind(0)):
        quantizer.t, quantizer.site = t, 0
        y, s = _generic_step(spec, p, s, x, spike_fn, quantizer)
        ys.append(y)
    return torch.stack(ys), list(s)


def plain_scan(
    kind: str,
    spike: str,
    quant: str,
    xs: torch.Tensor,
    state: list[torch.Tensor],
    params: list[torch.Tensor],
    layout: list[int],
    seed: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The plain step loop of one ``tracetorch::neuron_scan`` call: ``(ys [T, S], final state [S]...)``.

    Args:
        kind: the spec key (``"LIB"``, ``"LIB:zero"``); spike: a :func:`.ops.spike_tag` (``""`` for the LI
            family); quant: ``"round"``, ``"bernoulli"``, ``"probabilistic"`` or ``"none"``.
        xs: ``[T, S]``; state: each ``[S]``; params: each flat ``[n_k]``, read through ``layout``
            as in :func:`.ops.neuron_scan`; seed: the kernel call's seed as an int (the random
            quantizers fire where the kernels' draw for ``(seed, t*S + i, site)`` is below ``p``).
    """
    return plain_scan_elements(kind, spike, quant, xs, state, expand_params(params, layout, xs.shape[1]), seed)
