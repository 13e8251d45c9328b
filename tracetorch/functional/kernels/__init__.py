"""Fused sequence kernels generated from the neuron specs: the engine behind ``scan(..., fast=...)``.

How a kernel comes to be, for one ``(type, spike function, quantizer, dtype)``:

1. :mod:`.trace` runs the functional core's own ``_generic_step`` on symbolic scalars, recording
   one timestep of one neuron as straight-line code, and derives its reverse-mode adjoint op by
   op (so the kernels compute exactly the plain step, forward and backward; see the maths page,
   "Fused kernels: the backward pass");
2. :mod:`.cpu` prints that code as C inside an OpenMP time loop (state in L1, elements
   vectorized) and builds it with the system C compiler, cached on disk; :mod:`.gpu` prints it as a
   Triton kernel;
3. :mod:`.ops` registers the two generic ops ``tracetorch::neuron_scan`` and
   ``tracetorch::neuron_scan_backward`` with ``torch.library`` (fake kernels, autograd), so
   ``torch.compile(fullgraph=True)`` runs through them.

Selection (:func:`kernel_reason`): the kernel path serves the 52 built-in steps with a built-in
spike function (``Sigmoid``, ``FastSigmoid``, ``Atan``, ``Triangle``, ``Erf``) and a named quantizer,
on float32/float64 CPU tensors (float16/bfloat16/float32/float64 on CUDA with Triton), also under
``torch.func.vmap``, ``grad``, ``vjp``, ``jacrev`` and their compositions (the ops' vmap rule folds
the population into the kernel's elements); forward mode (``jvp``, ``jacfwd``) runs the plain
loop. Any other pure elementwise step (a function passed to ``scan``, a ``TTLayer`` subclass's
``step``) is traced into a kernel of its own (:mod:`.custom`); one the tracer cannot read runs
the plain step loop, and :func:`explain` says which operation stopped it. The object API's per-step
calls (``layer(x)``) take a one-step kernel on the CPU from ``config.step_min_elements`` elements on.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD

from ..neurons import NeuronSpec, _broadcasts_to
from .context import tracing
from .cpu import BuildError, cache_dir
from .custom import custom_reason, custom_scan, explain
from .ops import DoubleBackwardError, get_kernel, kernel_scan, spike_tag

__all__ = [
    "KernelConfig",
    "config",
    "kernel_reason",
    "explain",
    "custom_reason",
    "custom_scan",
    "kernel_scan",
    "spike_tag",
    "quant_tag",
    "cache_dir",
    "clear_cache",
    "BuildError",
    "DoubleBackwardError",
    "warn_no_compiler",
    "prebuild",
    "tracing",
]


@dataclass
class KernelConfig:
    """Settings of the kernel engine (module-level: ``tracetorch.functional.kernels.config``).

    Attributes:
        auto: ``fast=None`` takes the kernel path where it applies, and so do the object API's
            per-step calls on the CPU; ``False`` (or the environment variable ``TRACETORCH_FAST=0``
            at import) makes both run the plain step.
        step_min_elements: a per-step call takes the one-step kernel from this many elements
            (batch x neurons) on; below it the op-by-op step is as fast or faster. Measured on 2
            cores as op-by-op time / kernel time, training (fwd+bwd) and no_grad. One LIB layer
            alone: 2K elements 0.60 / 0.49, 32K 1.18 / 1.39, 131K 1.22 / 1.25, 1M 1.68 / 2.15.
            In a model (Linear -> LIB -> Linear -> LIB per step, the GEMMs dominating): 32K
            0.95 / 1.00, 65K 0.98 / 0.98, 131K 0.97 / 1.02, 262K 1.24 / 0.98, 524K 1.18 / 1.04.
        prebuild: a built-in layer created (or moved to another dtype) on the CPU starts building
            its kernel in background threads at once (:func:`prebuild`), so the build runs while
            the script loads its data instead of inside the first call; ``False`` (or
            ``TRACETORCH_PREBUILD=0`` at import) builds on first use. Either way the first call
            waits for the kernel, never runs the plain loop while it builds. See the docs page
            "Performance on the CPU".
    """

    auto: bool = os.environ.get("TRACETORCH_FAST", "1") != "0"
    step_min_elements: int = 262144
    prebuild: bool = os.environ.get("TRACETORCH_PREBUILD", "1") != "0"


#: The kernel engine's settings.
config = KernelConfig()

_CPU_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NO_COMPILER_WARNED = threading.Event()


def quant_tag(spec: Any, quant_fn: Any) -> str | None:
    """The quantizer's name for the kernels (``"none"`` for the LI family), ``None`` for a custom callable."""
    from ..spikes import QUANTIZERS

    if not spec.fires:
        return "none"
    if isinstance(quant_fn, str):
        return quant_fn if quant_fn in QUANTIZERS else None
    for name, fn in QUANTIZERS.items():
        if quant_fn is fn:
            return name
    return None


def _gpu_ready() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "CUDA tensors need Triton (it ships with torch's CUDA builds)"
    return None


def _forward_mode_active() -> bool:
    """Whether a forward-mode transform (``torch.func.jvp``/``jacfwd``) or a dual level is active."""
    if fwAD._current_level >= 0:
        return True
    if not torch._C._are_functorch_transforms_active():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())


def kernel_reason(
    spec: Any, params: Any, state: Any, xs: torch.Tensor, spike_fn: Any = None, quant_fn: Any = None
) -> str | None:
    """Why the kernel path cannot run this call (a sentence), or ``None`` when it can.

    Checks shapes, dtypes, devices, the spike function and quantizer and forward-mode transforms;
    whether a C compiler is there shows when the kernel is built. ``spec`` may also be any step
    function (then ``spike_fn`` and ``quant_fn``, if given, are its keyword arguments): the
    reason is :func:`custom_reason`'s, the one :func:`explain` gives.
    """
    if not isinstance(spec, NeuronSpec):
        kwargs = {k: v for k, v in (("spike_fn", spike_fn), ("quant_fn", quant_fn)) if v is not None}
        return custom_reason(spec, params, state, xs, **kwargs)
    if quant_tag(spec, quant_fn) is None:
        return "the kernels handle the quantizers 'round', 'bernoulli' and 'probabilistic', not a custom callable"
    if spec.fires and spike_tag(spike_fn) is None:
        return (
            "the kernels handle the built-in spike functions (Sigmoid, FastSigmoid, Atan, Triangle, Erf), "
            f"not {type(spike_fn).__name__}"
        )
    if _forward_mode_active():
        return (
            "the kernels have no forward-mode rule (torch.func.jvp, jacfwd, forward-mode AD); the plain "
            "loop runs there (reverse mode, vmap and their compositions run the kernels)"
        )
    tensors = [*params, *state, xs]
    if not all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return "params, state and xs must be plain tensors"
    if xs.dim() < 2:
        return "xs must be [T, ..., N]"
    why = _device_reason(tensors, xs)
    if why:
        return why
    shape = xs.shape[1:]
    if any(t.shape != shape for t in state):
        return "every state field must have the shape of one step of xs"
    if not all(_broadcasts_to(p.shape, shape) for p in params):  # (torch.broadcast_shapes: 30 us a call)
        return "params must broadcast to one step of xs"
    return None


def _device_reason(tensors: list[torch.Tensor], xs: torch.Tensor) -> str | None:
    """Why tensors of this dtype and device get no kernel (a sentence), or ``None``; built-in and
    custom steps share it. ``tensors`` must all have ``xs``'s dtype and device."""
    if any(t.dtype != xs.dtype or t.device != xs.device for t in tensors):
        return "params, state and xs must share one dtype and device"
    if xs.device.type == "cpu":
        if xs.dtype not in _CPU_DTYPES:
            return f"the CPU kernels take float32 and float64, not {xs.dtype}"
    elif xs.device.type == "cuda":
        if xs.dtype not in _GPU_DTYPES:
            return f"the GPU kernels take float16, bfloat16, float32 and float64, not {xs.dtype}"
        return _gpu_ready()
    else:
        return f"no kernels for device {xs.device.type!r}"
    return None


def prebuild(spec: Any, spike_fn: Any, quant_fn: Any, dtype: torch.dtype) -> bool:
    """Start building the CPU kernel of ``spec`` with this spike function, quantizer and dtype in
    background threads, forward and backward at once; ``True`` when a build is running or done.

    Nothing happens (``False``) when ``config.prebuild`` or ``config.auto`` is off, or the kernels
    do not serve this combination (a custom spike function or quantizer, a dtype other than
    float32/float64). Returns at once: the first kernel call waits for the build (the run never
    switches paths halfway), and a failed build is reported there, as a build on first use would be
    (the warning, then the plain loop). Nothing is built twice: a second call, or a first use while
    the build runs, takes the same build.
    """
    if not (config.prebuild and config.auto) or dtype not in _CPU_DTYPES:
        return False
    quant, spike = quant_tag(spec, quant_fn), spike_tag(spike_fn)
    if quant is None or (spec.fires and spike is None):
        return False
    # the key scan_spec asks for: the LI family has no spike function ("" when it is not a built-in)
    get_kernel(spec.key, spike or "", quant).prebuild("float" if dtype == torch.float32 else "double")
    return True


def warn_no_compiler(reason: str) -> None:
    """Warn once per process that the kernels cannot be built here and the plain loop runs.

    ``reason`` is the whole :class:`BuildError` message (a failing compiler's own error included).
    """
    if not _NO_COMPILER_WARNED.is_set():
        _NO_COMPILER_WARNED.set()
        warnings.warn(
            "tracetorch: the fused kernels cannot run here; sequences run the plain step loop (correct, "
            "slower). Install a working C compiler for the fused kernels, or pass fast=False to silence "
            f"this. The cause: {reason}",
            RuntimeWarning,
            stacklevel=4,
        )


def clear_cache() -> None:
    """Forget the kernels traced and loaded in this process (the disk cache stays)."""
    from . import cpu, gpu  # gpu imports Triton only inside the kernel modules it generates

    get_kernel.cache_clear()
    with cpu._LOCK:
        cpu._LOADED.clear()
        cpu._COMPILER.clear()
    with gpu._LOCK:
        gpu._LOADED.clear()
    _NO_COMPILER_WARNED.clear()
