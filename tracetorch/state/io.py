"""Saving and loading a model's hidden states: ``.pt``, ``.safetensors`` or an in-memory dict.

On disk a state is a flat ``{"net.1.mem": tensor}`` dict. Both formats carry the same metadata:
the format name and version, and each layer's type, ``dim`` and ``num_neurons``. ``.safetensors``
keeps it in the file's metadata; ``.pt`` inside the flat dict itself, under the key
:data:`METADATA_KEY`, as a ``uint8`` tensor of UTF-8 JSON, so the file still loads with
``torch.load(weights_only=True)`` as a dict of tensors. ``.pt`` files are read with
``torch.load(weights_only=True)`` (a pickled object is refused). A ``.pt`` file or a dict without
the metadata key (written by hand, or before tracetorch 0.16) is checked by keys, shapes and
dtypes only; with it, the layer types are checked too.

Everything is validated before any state of the model is touched: keys, shapes, dtypes, layer
types, and that every tensor is dense and strided with data (meta, sparse, quantized and nested
tensors are refused). Loaded tensors are copies: nothing the model holds shares memory with the
source dict. Writes go to a temporary file in the target's directory that is flushed to disk
(``fsync``) and renamed into place, and the directory is synced after the rename, so a crash
never leaves half a file; a new file gets the mode the umask gives (``0o666 & ~umask``), a
replaced file keeps its mode.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
from torch import nn

from .._keywords import keywords
from .tree import flatten, get_states, named_layers

__all__ = ["save_states", "load_states", "LoadResult", "FORMAT", "FORMAT_VERSION", "METADATA_KEY"]

FORMAT = "tracetorch-states"
FORMAT_VERSION = "1"
#: The key of a ``.pt`` state file's metadata (a ``uint8`` tensor of UTF-8 JSON) in its flat dict.
METADATA_KEY = "__tracetorch_metadata__"
PathLike = Union[str, os.PathLike]


class LoadResult(NamedTuple):
    """What a non-strict load skipped: keys the model has but the source lacks, and the reverse."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _metadata(model: nn.Module) -> dict[str, str]:
    layers = {
        p: {"type": type(layer).__name__, "dim": layer.dim, "num_neurons": layer.num_neurons}
        for p, layer in named_layers(model)
    }
    return {"format": FORMAT, "version": FORMAT_VERSION, "layers": json.dumps(layers)}


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only set, which races with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | Path, directory: bool = False) -> None:
    if directory and not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open a directory to sync it; its rename is already durable there
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, synced, then renamed onto ``path``; the
    directory is synced after. On any error the temporary file is removed and ``path`` is untouched."""
    where = f"save_states({str(path)!r})"
    if path.is_dir():
        raise IsADirectoryError(f"{where}: is a directory, expected a file path ending in .pt or .safetensors")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{where}: the directory {str(parent)!r} does not exist")
    mode = (path.stat().st_mode & 0o7777) if path.exists() else (0o666 & ~_umask())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(parent, directory=True)


@keywords
def save_states(model: nn.Module, path: PathLike | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of every hidden state as ``{"net.1.mem": tensor}``; written to ``path`` if given.

    The suffix picks the format: ``.pt`` or ``.safetensors``; both carry the layers' types (see the
    module docs). Lazy (never run) layers are left out. The returned dict holds the states only.
    """
    flat = {k: v.detach().clone().contiguous() for k, v in flatten(get_states(model)).items()}
    if path is not None:
        path = Path(path)
        meta = _metadata(model)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))
        elif path.suffix == ".pt":
            blob = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
            _atomic_write(path, lambda tmp: torch.save({**flat, METADATA_KEY: blob}, tmp))
        else:
            raise ValueError(f"save_states: path must end in .pt or .safetensors, received {str(path)!r}")
    return flat


def _check_meta(meta: Any, where: str) -> dict[str, dict[str, Any]]:
    """The per-layer entries of validated metadata ``{"format", "version", "layers"}``; ``ValueError`` naming ``where``."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{where}: not a tracetorch state file (metadata format {got!r}, expected {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{where}: state format version {meta.get('version')!r} is not supported (expected {FORMAT_VERSION!r})"
        )
    layers = meta.get("layers")
    if isinstance(layers, str):
        try:
            layers = json.loads(layers)
        except ValueError:
            raise ValueError(f"{where}: corrupt metadata: 'layers' is not valid JSON") from None
    if not isinstance(layers, dict):
        raise ValueError(
            f"{where}: corrupt metadata: 'layers' must be a JSON object of layer path -> entry, "
            f"received {type(layers).__name__ if layers is not None else 'nothing'}"
        )
    for path, entry in layers.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ValueError(
                f"{where}: corrupt metadata: the entry of layer {path!r} must be an object with a 'type', "
                f"received {entry!r}"
            )
    return layers


def _pt_meta(blob: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise ValueError(f"{where}: corrupt metadata: {METADATA_KEY!r} must be a 1-d uint8 tensor of JSON")
    try:
        meta = json.loads(bytes(blob.tolist()).decode())
    except ValueError:
        raise ValueError(f"{where}: corrupt metadata: {METADATA_KEY!r} is not valid UTF-8 JSON") from None
    return _check_meta(meta, where)


def _read(src: Union[PathLike, dict]) -> tuple[Any, dict[str, dict[str, Any]] | None, str, bool]:
    """``(flat, layer metadata or None, where, owned)``; ``owned``: the tensors are fresh (read from a file)."""
    if isinstance(src, dict):
        return src, None, "load_states(dict)", False
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"load_states: src must be a path or a dict, received {type(src).__name__}")
    path = Path(src)
    where = f"load_states({str(path)!r})"
    if path.is_dir():
        raise IsADirectoryError(f"{where}: is a directory, expected a .pt or .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                flat = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for malformed files
            raise ValueError(f"{where}: not a readable .safetensors file ({type(err).__name__}: {err})") from None
        return flat, _check_meta(meta, where), where, True
    if path.suffix == ".pt":
        try:
            flat = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{where}: refused or unreadable .pt file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        return flat, None, where, True
    raise ValueError(f"{where}: path must end in .pt or .safetensors")


@keywords
def load_states(model: nn.Module, src: Union[PathLike, dict], strict: bool = True) -> LoadResult:
    """Load hidden states saved by :func:`save_states` (a path or a ``{"net.1.mem": tensor}`` dict).

    Every key, shape, dtype, layer type and tensor kind is checked before the model is touched;
    on any error the model's states are exactly as before and the ``ValueError`` lists the
    missing, unexpected and mismatched entries (a corrupt file or metadata is a ``ValueError``
    naming the file, a directory an ``IsADirectoryError``, a missing file a ``FileNotFoundError``).
    ``strict=False`` skips missing layers and unexpected keys (reported in the returned
    :class:`LoadResult`) but never a mismatch. Lazy layers are filled in. The model gets copies:
    a dict passed in keeps no link to it.
    """
    flat, saved_layers, where, owned = _read(src)
    if not isinstance(flat, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in flat.items()
    ):
        raise ValueError(f"{where}: expected a dict of str -> tensor, received {type(flat).__name__}")
    if METADATA_KEY in flat:
        flat = dict(flat)
        saved_layers = _pt_meta(flat.pop(METADATA_KEY), where)
    saved_layers = saved_layers or {}
    missing, mismatched, updates, used = [], [], [], set()
    for path, layer in named_layers(model):
        keys = [f"{path}.{n}" if path else n for n in layer.state_names]
        present = [k for k in keys if k in flat]
        if not present:
            missing.extend(keys)
            continue
        used.update(present)
        if len(present) != len(keys):
            mismatched.append(f"{path or '<model>'}: incomplete, missing {[k for k in keys if k not in flat]}")
            continue
        info = saved_layers.get(path)
        if info is not None:
            if info.get("type") != type(layer).__name__:
                mismatched.append(f"{path}: saved from a {info.get('type')}, the model has a {type(layer).__name__}")
                continue
            if "dim" in info and info["dim"] != layer.dim:
                mismatched.append(f"{path}: saved with dim={info['dim']}, the model's layer has dim={layer.dim}")
                continue
        ref = layer.state
        expected_dtype = ref[0].dtype if ref is not None else _layer_tensor(layer).dtype
        prefix = f"{path}." if path else ""
        problems = layer._state_problems(
            {n: flat[k] for n, k in zip(layer.state_names, keys)}, prefix=prefix, dtype=expected_dtype
        )
        if problems:
            mismatched.extend(problems)
            continue
        updates.append((layer, keys))
    unexpected = [k for k in flat if k not in used]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"{where}: states not loaded, the model is unchanged.\n  missing: {missing}\n  unexpected: {unexpected}\n"
            f"  mismatched: {mismatched}"
        )
    for layer, keys in updates:
        device = _layer_tensor(layer).device
        values = [flat[k].detach().to(device=device, copy=not owned) for k in keys]
        layer._put_states(dict(zip(layer.state_names, values)))
    return LoadResult(missing, unexpected)


def _layer_tensor(layer: nn.Module) -> torch.Tensor:
    """A tensor that tells the layer's dtype and device: its first param or buffer."""
    for t in (*layer.parameters(recurse=False), *layer.buffers(recurse=False)):
        return t
    return torch.empty(0)
