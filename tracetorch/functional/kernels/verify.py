"""Kernels check themselves where they are built, against the plain step.

A kernel is compiled on the user's machine by the user's compiler (or by Triton for the user's
GPU); a compiler, a vector unit or a GPU never tested here could give another answer. So before
a kernel serves its first call in a process, :func:`check` runs it once on a small random input
(``T = 10`` steps, crossing a checkpoint chunk, ``S = 6`` elements with per-element params, a fixed
seed; the draws come from a private generator, torch's global one is untouched), forward and
backward, and compares outputs, final states and every gradient with the plain step loop
(:data:`REFERENCE`: :func:`.plain.plain_scan_elements`, differentiated by torch's autograd) within
the tolerances of the test suite: float64 to ``1e-10`` (relative and absolute), float32 outputs and
states to ``1.3e-6`` relative / ``1e-5`` absolute, float32 gradients to ``1e-4``.

Once per kernel and device per process; on the CPU the result is also kept in the library's
record in the cache (:mod:`.cache`), so a warm start costs nothing. A kernel that disagrees is not
used: one warning names the kernel, the device and the largest difference, and its calls run the
plain step loop (:func:`plain_forward`, :func:`plain_backward`: the same op contract, so eager,
``torch.compile`` and ``torch.func`` paths all stay right).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..neurons import spec_from_key
from . import cache, plain

__all__ = ["REFERENCE", "check", "cpu_ok", "device_ok", "plain_forward", "plain_backward", "CHECK_STEPS"]

#: the plain step loop the kernels are checked against and fall back to: ``(kind, spike, quant, xs
#: [T, S], state [S]..., per-element params [S]..., seed int) -> (ys, final state list)``
REFERENCE: dict[str, Callable[..., Any]] = {"scan": plain.plain_scan_elements}
#: the check's size: timesteps (more than one checkpoint chunk) and elements
CHECK_STEPS, CHECK_ELEMENTS = 10, 6
#: bumped when the check changes, so results kept on disk are redone
CHECK_VERSION = 1
_TOL = {
    torch.float64: ((1e-10, 1e-10), (1e-10, 1e-10)),
    torch.float32: ((1.3e-6, 1e-5), (1e-4, 1e-4)),
}  # (rtol, atol) of (outputs and states, gradients)
_DONE: dict[tuple[Any, ...], bool] = {}  # (kernel id, device, dtype) -> ok, for devices other than the CPU


def _inputs(kind: str, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    spec = spec_from_key(kind)
    g = torch.Generator().manual_seed(20260)
    T, S = CHECK_STEPS, CHECK_ELEMENTS

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def uni(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    params = []
    for p in spec.params:
        if p.kind == "decay":
            params.append(0.1 + 0.8 * uni(S))
        elif p.kind == "threshold":
            params.append(0.5 + 0.5 * uni(S))
        else:
            params.append((1.0 if "scale" in p.name else 0.5) + 0.5 * rnd(S))
    out = {
        "xs": 1.5 * rnd(T, S),
        "state": [0.5 * rnd(S) for _ in spec.state_names],
        "params": params,
        "grad_ys": rnd(T, S),
        "grad_final": [rnd(S) for _ in spec.state_names],
    }
    conv = lambda t: t.to(device=device, dtype=dtype).contiguous()  # noqa: E731
    return {k: [conv(t) for t in v] if isinstance(v, list) else conv(v) for k, v in out.items()}


def _reference(kind, spike, quant, xs, state, params_elem, seed, grad_ys, grad_final):
    """The plain loop's ``(ys, final, grad xs, grad state, grad per-element params)``."""
    leaves = [t.detach().requires_grad_(True) for t in [xs, *state, *params_elem]]
    ns = len(state)
    with torch.enable_grad():
        ys, final = REFERENCE["scan"](kind, spike, quant, leaves[0], leaves[1 : 1 + ns], leaves[1 + ns :], seed)
        grads = torch.autograd.grad([ys, *final], leaves, [grad_ys, *grad_final], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return ys.detach(), [f.detach() for f in final], grads[0], grads[1 : 1 + ns], grads[1 + ns :]


def check(kernel: Any, device: torch.device, dtype: torch.dtype, forward: Callable, backward: Callable):
    """Run the kernel (through ``forward`` / ``backward``, the op bodies' signatures without the
    kernel's names) against :data:`REFERENCE`: ``(agrees, largest difference, where)``."""
    kind, spike, quant = kernel.kind, kernel.spike, kernel.quant
    a = _inputs(kind, dtype, device)
    S = CHECK_ELEMENTS
    layout = [S, 1] * len(a["params"])
    seed_t = torch.tensor(0x5EED5EED1234, dtype=torch.int64)
    seed = int(seed_t)
    with torch.no_grad():
        ys, final, saved = forward(a["xs"], a["state"], a["params"], layout, seed_t, True)
        gxs, gstate, gelem = backward(
            a["xs"], a["state"], a["params"], layout, seed_t, saved, a["grad_ys"], a["grad_final"]
        )
    want = _reference(kind, spike, quant, a["xs"], a["state"], a["params"], seed, a["grad_ys"], a["grad_final"])
    (rtol, atol), (grtol, gatol) = _TOL[dtype]
    got = [("output", ys), *(("final state", f) for f in final), ("input gradient", gxs)]
    got += [("initial-state gradient", g) for g in gstate] + [("param gradient", g) for g in gelem]
    ref = [want[0], *want[1], want[2], *want[3], *want[4]]
    found = []  # (tensor failed, its largest difference, its name)
    for k, ((name, g), w) in enumerate(zip(got, ref)):
        rt, at = (rtol, atol) if k <= len(final) else (grtol, gatol)
        g, w = g.double(), w.double()
        diff = torch.where(torch.isnan(g) & torch.isnan(w), 0.0, (g - w).abs().nan_to_num(nan=float("inf")))
        failed = bool((diff > at + rt * w.abs().nan_to_num(0.0)).any())
        found.append((failed, float(diff.max()) if diff.numel() else 0.0, name))
    agrees = not any(f for f, _, _ in found)
    _, worst, where = max((x for x in found if x[0] or agrees), key=lambda x: x[1])
    return agrees, worst, where


def _warn(kernel: Any, device: Any, dtype: torch.dtype, diff: float, where: str) -> None:
    warnings.warn(
        f"tracetorch kernel self-check failed: the fused kernel {kernel.kind} (spike {kernel.spike or '-'}, "
        f"quantizer {kernel.quant}, {str(dtype).replace('torch.', '')}) on device {device} disagrees with the "
        f"plain step (largest difference {diff:.3g}, in the {where}); it is not used, and its calls run "
        "the plain step loop (correct, slower). Please report this with your compiler, CPU or GPU.",
        RuntimeWarning,
        stacklevel=3,
    )


def cpu_ok(kernel: Any, fwd_lib: Any, bwd_lib: Any, real: str, forward: Callable, backward: Callable) -> bool:
    """Whether the CPU libraries of ``kernel`` for ``real`` (its forward's and its backward's)
    pass :func:`check`; the verdict is kept in the forward library's record on disk, naming the
    backward library it was reached with. One warning when they do not pass."""
    if getattr(kernel, "spec", None) is None:
        return True  # a user's traced step (.custom): no spec to draw the check's inputs from
    dtype = torch.float64 if real == "double" else torch.float32
    path, bwd_path = Path(fwd_lib._name), Path(bwd_lib._name)
    rec, bwd_rec = cache.read_record(path) or {}, cache.read_record(bwd_path) or {}
    found = rec.get("check")
    if (
        isinstance(found, dict)
        and found.get("version") == CHECK_VERSION
        and found.get("backward") == bwd_rec.get("sha256")
        and isinstance(found.get("ok"), bool)
    ):
        ok, diff, where = found["ok"], float(found.get("largest", 0.0)), str(found.get("where", ""))
    else:
        ok, diff, where = _run_check(kernel, torch.device("cpu"), dtype, forward, backward)
        if rec and cache.open_entry(path) is not None:  # still the library just loaded: note the verdict
            rec["check"] = {
                "version": CHECK_VERSION,
                "ok": ok,
                "largest": diff,
                "where": where,
                "backward": bwd_rec.get("sha256"),
            }
            try:
                cache.write_record(path, rec)
            except OSError:
                pass  # the check is redone next time
    if not ok:
        _warn(kernel, "cpu", dtype, diff, where)
    return ok


def _run_check(kernel, device, dtype, forward, backward):
    # whatever the caller's context (inference mode, a torch.func transform, no_grad): plain tensors
    with torch.inference_mode(False), torch._C._DisableFuncTorch():
        return check(kernel, device, dtype, forward, backward)


def device_ok(kernel: Any, device: torch.device, dtype: torch.dtype, forward: Callable, backward: Callable) -> bool:
    """:func:`check` for a GPU kernel, once per kernel, device and dtype per process (float16 and
    bfloat16 are not checked: the plain step rounds at each op in those types, the kernels do not)."""
    if dtype not in _TOL or getattr(kernel, "spec", None) is None:
        return True
    key = (id(kernel), str(device), dtype)
    ok = _DONE.get(key)
    if ok is None:
        ok, diff, where = _run_check(kernel, device, dtype, forward, backward)
        _DONE[key] = ok
        if not ok:
            _warn(kernel, device, dtype, diff, where)
    return ok


# ---- the plain loop in the ops' place, for a refused kernel --------------------------------------


def plain_forward(xs, state, params, kind, spike, quant, layout, seed, saved):
    """:func:`.ops.neuron_scan`'s outputs from the plain loop (``saved`` is returned untouched:
    :func:`plain_backward` recomputes the forward)."""
    S = xs.shape[1]
    with torch.no_grad():
        ys, final = REFERENCE["scan"](
            kind, spike, quant, xs, list(state), plain.expand_params(list(params), layout, S), int(seed)
        )
    return ys.contiguous(), [f.contiguous() for f in final], saved


def plain_backward(xs, state, params, kind, spike, quant, layout, seed, grad_ys, grad_final):
    """:func:`.ops.neuron_scan_backward`'s outputs (per-element param gradients) from the plain loop."""
    S = xs.shape[1]
    elem = [p.detach().contiguous() for p in plain.expand_params([p.detach() for p in params], layout, S)]
    _, _, gxs, gstate, gelem = _reference(kind, spike, quant, xs, list(state), elem, int(seed), grad_ys, list(grad_final))
    return gxs, gstate, gelem
