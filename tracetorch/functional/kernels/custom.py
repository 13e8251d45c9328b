"""Kernels for any pure elementwise step: a function passed to ``scan``, a ``TTLayer``'s ``step``.

A user's ``step(params, state, x) -> (y, new_state)`` is traced as the built-in steps are (see
:mod:`.trace`): its params and state (NamedTuples, dicts, tuples: any optree pytree) are flattened,
every tensor leaf becomes a symbolic scalar, and the step runs once on them. What it computes is
one graph; the graph's hash names the kernel (``"custom:<hash>"``), so two steps that compute the
same thing share a kernel, and a closure rebuilt on every call builds nothing new. The kernel
then goes through the same build, cache and torch.library ops as the built-in types.

Tracing costs a few hundred microseconds; a per-process cache keeps each step's trace, keyed by
the identity of everything the step can read (the function, its closure cells, defaults, the
globals and module attributes its code names, the attributes of the object it is bound to, and
the same one level further into what those hold), by the structure of its params and state and
by its keyword arguments. Any change there traces again. A one-element tensor captured from outside
the step is read as a constant and re-read when it changes in place. What the cache cannot see is
a change deeper than that (a global read by a helper of a helper): change such a step's code
or pass the value in its params.

A step the tracer cannot read runs the plain loop; :func:`explain` says which operation stopped it.
"""

from __future__ import annotations

import functools
import os
import threading
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optree
import torch

from .context import tracing
from .trace import Traced, TraceError, adjoint, graph_key, trace_custom

__all__ = ["explain", "custom_reason", "custom_scan", "registered", "trace_stats"]

NAMESPACE = "tracetorch"
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_ATOMS = (bool, int, float, complex, str, bytes, types.ModuleType, types.BuiltinFunctionType)
_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


@dataclass(frozen=True)
class CustomKernel:
    """A traced user step: the kernel's name, its quantizer and the structure of its state."""

    kind: str
    quant: str
    state_def: Any
    param_tensor: tuple[bool, ...]
    casts: frozenset[torch.dtype] = frozenset()

    def dtype_reason(self, dtype: torch.dtype) -> str | None:
        """Why this step cannot run in one ``dtype`` (it computes some values in another), or ``None``."""
        other = sorted(str(c) for c in self.casts if c != dtype)
        if not other:
            return None
        return (
            f"the step computes some values in {', '.join(other)} (a .float(), or a comparison times a Python "
            f"number, which torch computes in the default dtype) and the tensors are {dtype}; a kernel "
            "computes in one dtype: write .to(x.dtype)"
        )


_REGISTRY: dict[str, Traced] = {}
#: per kernel, one step that traced to it and its structure: the plain recomputation of second derivatives
_STEPS: dict[str, tuple[Any, ...]] = {}
_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple, tuple[list[Any], list[tuple[torch.Tensor, int]], CustomKernel | str]] = OrderedDict()
_CACHE_SIZE = 256
#: counts of traces run and of calls served from the trace cache (for the tests and benchmarks)
trace_stats = {"traced": 0, "cached": 0}


def registered(kind: str) -> Traced:
    """The traced step registered under ``kind`` (``"custom:<hash>"``) in this process."""
    with _LOCK:
        tr = _REGISTRY.get(kind)
    if tr is None:
        raise RuntimeError(
            f"tracetorch kernels: no custom step {kind!r} was traced in this process (a kernel of a "
            "custom step is named by its graph, registered when the step is first traced)"
        )
    return tr


# ---- what a step can read: the trace cache's key ---------------------------------------------


@functools.lru_cache(maxsize=1024)
def _names(code: types.CodeType) -> tuple[str, ...]:
    """Every global or attribute name ``code`` (and the functions defined in it) can read, sorted."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= set(_names(c))
    return tuple(sorted(names))


def _snapshot(obj: Any, depth: int, ids: list[int], keep: list[Any], seen: set[int]) -> None:
    """Append the identities of ``obj`` and of what it can read (``depth`` levels) to ``ids``."""
    if isinstance(obj, types.MethodType):  # made anew on every attribute access: its function and object
        _snapshot(obj.__func__, depth, ids, keep, seen)
        _snapshot(obj.__self__, depth, ids, keep, seen)
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    keep.append(obj)
    ids.append(id(obj))
    if isinstance(obj, torch.Tensor):
        ids.append(obj._version)
        return
    if depth == 0 or obj is None or isinstance(obj, _ATOMS):
        return
    nxt = depth - 1
    if isinstance(obj, functools.partial):
        for v in (obj.func, *obj.args, *obj.keywords.values()):
            _snapshot(v, depth, ids, keep, seen)
    elif isinstance(obj, types.FunctionType):
        for cell in obj.__closure__ or ():
            try:
                _snapshot(cell.cell_contents, nxt, ids, keep, seen)
            except ValueError:  # an empty cell
                pass
        for v in (*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()):
            _snapshot(v, nxt, ids, keep, seen)
        names = _names(obj.__code__)
        glob = obj.__globals__
        for name in names:
            v = glob.get(name, _snapshot)
            ids.append(id(v))
            if isinstance(v, types.ModuleType):  # F.round_st: the module's attributes the code names
                for attr in names:
                    ids.append(id(v.__dict__.get(attr, _snapshot)))
            elif v is not _snapshot:
                _snapshot(v, nxt, ids, keep, seen)
    elif isinstance(obj, type):
        if obj.__module__.split(".")[0] not in ("torch", "builtins"):
            for v in vars(obj).values():
                if isinstance(v, (staticmethod, classmethod)):
                    v = v.__func__
                if isinstance(v, types.FunctionType):
                    _snapshot(v, nxt, ids, keep, seen)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _snapshot(v, nxt, ids, keep, seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            ids.append(hash(k) if isinstance(k, str) else id(k))
            _snapshot(v, nxt, ids, keep, seen)
    else:
        _snapshot(type(obj), nxt, ids, keep, seen)
        attrs = getattr(obj, "__dict__", None)
        if attrs is not None:
            state_names = set(attrs.get("_state_names", ()))
            for k, v in attrs.items():
                if k == "_tt_version" or k in state_names or isinstance(v, torch.Tensor):
                    continue  # the layer's own states and counters: data, never read as code
                ids.append(hash(k))
                if isinstance(v, dict):  # a module's registries (params, buffers, hooks): by identity
                    ids.append(id(v))
                    keep.append(v)
                    continue
                _snapshot(v, nxt, ids, keep, seen)


# ---- tracing -------------------------------------------------------------------------------------


def _where(err: BaseException) -> str:
    """`` (file:line, in fn: code)`` of the innermost frame of the user's code in ``err``'s traceback."""
    frames = traceback.extract_tb(err.__traceback__)
    for fr in reversed(frames):
        path = os.path.abspath(fr.filename)
        if not path.startswith((_HERE, _TORCH_DIR)):
            code = f": {fr.line.strip()}" if fr.line else ""
            return f" (at {os.path.basename(path)}:{fr.lineno}, in {fr.name}{code})"
    return ""


def _trace(step: Callable[..., Any], p_leaves, p_def, s_def, n_state: int, kwargs) -> tuple[CustomKernel | str, list]:
    is_tensor = tuple(isinstance(p, torch.Tensor) for p in p_leaves)
    consts = [p for p in p_leaves if not isinstance(p, torch.Tensor)]

    def rebuild(psyms, ssyms, x):
        it, cit = iter(psyms), iter(consts)
        leaves = [next(it) if t else next(cit) for t in is_tensor]
        out = step(optree.tree_unflatten(p_def, leaves), optree.tree_unflatten(s_def, ssyms), x, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TraceError("kernel trace: the step must return (y, new_state)")
        y, new = out
        new_leaves, new_def = optree.tree_flatten(new, namespace=NAMESPACE)
        if new_def != s_def:
            raise TraceError(f"kernel trace: the step returns a new state shaped {new_def}, not as it came: {s_def}")
        return y, new_leaves, new_def

    trace_stats["traced"] += 1
    try:
        tr, _ = trace_custom(step, n_state, sum(is_tensor), rebuild)
        quant = tr.graph.quant_kind or "round"
        adjoint(tr, quant)  # a gradient the kernels cannot give (heaviside) is found here, not at backward
    except TraceError as err:
        return str(err).removeprefix("kernel trace: ") + _where(err), []
    except Exception as err:  # the step itself failed on symbolic values (an unknown attribute, say)
        return f"tracing the step raised {type(err).__name__}: {err}{_where(err)}", []
    kind = "custom:" + graph_key(tr, quant)
    with _LOCK:
        _REGISTRY.setdefault(kind, tr)
        _STEPS.setdefault(kind, (step, p_def, s_def, is_tensor, consts, dict(kwargs)))
    return CustomKernel(kind, quant, s_def, is_tensor, frozenset(tr.graph.casts)), tr.graph.captured


def _plan(step: Callable[..., Any], params: Any, state: Any, kwargs: dict[str, Any]) -> CustomKernel | str:
    """The traced kernel of ``step`` for this structure of params and state, or why there is none."""
    p_leaves, p_def = optree.tree_flatten(params, namespace=NAMESPACE)
    s_leaves, s_def = optree.tree_flatten(state, namespace=NAMESPACE)
    ids: list[int] = []
    keep: list[Any] = [p_def, s_def]
    _snapshot(step, 3, ids, keep, set())
    for k in sorted(kwargs):
        ids.append(hash(k))
        _snapshot(kwargs[k], 2, ids, keep, set())
    consts = []
    for p in p_leaves:
        if isinstance(p, torch.Tensor):
            consts.append(None)
        elif isinstance(p, (int, float)) and not isinstance(p, bool):
            consts.append((type(p), p))
        else:
            return f"a param leaf is a {type(p).__name__}; params hold tensors (or Python numbers)"
    key = (tuple(ids), p_def, s_def, tuple(consts))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and all(t._version == v for t, v in hit[1]):
            _CACHE.move_to_end(key)
            trace_stats["cached"] += 1
            return hit[2]
    result, captured = _trace(step, p_leaves, p_def, s_def, len(s_leaves), kwargs)
    with _LOCK:
        _CACHE[key] = (keep, captured, result)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return result


def _tensor_reason(params: list[Any], state: list[Any], xs: torch.Tensor) -> str | None:
    """Why these tensors cannot go through a kernel (the checks of ``kernel_reason``), or ``None``."""
    if not state:
        return "the step has no state: it is elementwise over time as well, apply it to all of xs at once"
    tensors = [p for p in params if isinstance(p, torch.Tensor)] + [*state, xs]
    if not all(type(t) in _TENSOR_TYPES for t in tensors):
        bad = next(t for t in tensors if type(t) not in _TENSOR_TYPES)
        return f"params, state and xs must be plain tensors, received a {type(bad).__name__}"
    if torch._C._are_functorch_transforms_active():
        return "a custom step's kernel does not run under torch.func transforms (vmap, grad, ...); the plain loop does"
    if tracing():  # this call's own fact (torch.compiler.is_compiling() is True in every thread)
        return "under torch.compile a custom step runs as the plain loop (which the compiler fuses)"
    if xs.dim() < 2:
        return "xs must be [T, ..., N]"
    from ..neurons import _broadcasts_to
    from . import _device_reason

    why = _device_reason(tensors, xs)
    if why:
        return why

    shape = xs.shape[1:]
    for t in state:
        if t.shape != shape:
            return f"every state leaf must have the shape of one step of xs {list(shape)}, received {list(t.shape)}"
    for p in params:
        if isinstance(p, torch.Tensor) and not _broadcasts_to(p.shape, shape):
            return f"params must broadcast to one step of xs {list(shape)}, received {list(p.shape)}"
    return None


def custom_reason(
    step: Callable[..., Any], params: Any, state: Any, xs: torch.Tensor, **step_kwargs: Any
) -> str | None:
    """Why ``scan(step, params, state, xs, **step_kwargs)`` cannot take a kernel (a sentence), or ``None``."""
    p_leaves = optree.tree_leaves(params, namespace=NAMESPACE)
    s_leaves = optree.tree_leaves(state, namespace=NAMESPACE)
    if not isinstance(xs, torch.Tensor):
        return f"xs must be a tensor, received {type(xs).__name__}"
    why = _tensor_reason(p_leaves, s_leaves, xs)
    if why is not None:
        return why
    plan = _plan(step, params, state, step_kwargs)
    return plan if isinstance(plan, str) else plan.dtype_reason(xs.dtype)


def custom_scan(
    step: Callable[..., Any], params: Any, state: Any, xs: torch.Tensor, step_kwargs: dict[str, Any]
) -> tuple[tuple[torch.Tensor, Any] | None, str | None]:
    """``scan(step, ...)`` through the step's kernel: ``((ys, final_state), None)``, or ``(None, reason)``.

    Raises :class:`~tracetorch.functional.kernels.BuildError` where the kernel cannot be built.
    """
    from .ops import scan_flat

    p_leaves = optree.tree_leaves(params, namespace=NAMESPACE)
    s_leaves = optree.tree_leaves(state, namespace=NAMESPACE)
    why = _tensor_reason(p_leaves, s_leaves, xs)
    if why is not None:
        return None, why
    plan = _plan(step, params, state, step_kwargs)
    if isinstance(plan, str):
        return None, plan
    why = plan.dtype_reason(xs.dtype)
    if why is not None:
        return None, why
    tensors = [p for p in p_leaves if isinstance(p, torch.Tensor)]
    ys, final = scan_flat(plan.kind, "", plan.quant, tensors, s_leaves, xs)
    return (ys, optree.tree_unflatten(plan.state_def, final)), None


def plain_elements(
    kind: str, quant: str, xs: torch.Tensor, state: list[torch.Tensor], params: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The plain loop of a custom kernel's step over ``xs`` ``[T, S]`` (per-element params ``[S]``):
    what second derivatives differentiate (torch's autograd, to any order)."""
    with _LOCK:
        found = _STEPS.get(kind)
    if found is None:
        registered(kind)  # raises the clear error
    if quant != "round":
        raise RuntimeError(
            "tracetorch kernels: a second derivative through a custom step that draws random spikes cannot "
            "replay the kernel's draws in the step itself; pass fast=False to scan/run for this step"
        )
    step, p_def, s_def, is_tensor, consts, kwargs = found
    it, cit = iter(params), iter(consts)
    p = optree.tree_unflatten(p_def, [next(it) if t else next(cit) for t in is_tensor])
    s = optree.tree_unflatten(s_def, list(state))
    ys = []
    for x in xs.unbind(0):
        y, s = step(p, s, x, **kwargs)
        ys.append(y)
    return torch.stack(ys), optree.tree_leaves(s, namespace=NAMESPACE)


def explain(step: Any, params: Any = None, state: Any = None, x: Any = None, **step_kwargs: Any) -> str | None:
    """Why ``step`` does not run through a fused kernel, as a sentence naming the operation; ``None`` if it does.

    Args:
        step: a pure ``step(params, state, x) -> (y, new_state)`` (a built-in ``lib_step`` or
            your own function), or a neuron layer (then call ``explain(layer, x)``).
        params, state: as the step takes them (NamedTuples, dicts, tuples of tensors).
        x: one step's input ``[..., N]`` (each state leaf has its shape).
        **step_kwargs: passed to the step (``spike_fn``, ``quant_fn`` for the built-in ones).

    ``explain(step, params, state, x)`` checks what ``scan(step, params, state, xs)`` checks
    for a sequence of such ``x``: the step's operations (a matmul, a reduction across neurons,
    indexing, branching on a value, an unknown function: the first one met is named, with its
    line), the tensors' dtypes, devices and shapes.
    """
    if hasattr(step, "kernel_reason") and callable(step.kernel_reason) and state is None and x is None:
        return step.kernel_reason(params)  # explain(layer, x)
    from ..time import builtin_spec

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"explain: x must be one step's input tensor, received {type(x).__name__}")
    xs = x.unsqueeze(0)
    spec = builtin_spec(step)
    if spec is not None:
        from ..neurons import resolve_reset
        from ..spikes import sigmoid4x
        from . import kernel_reason

        spec = resolve_reset(spec, step_kwargs.get("reset", "subtract"), "explain")
        return kernel_reason(
            spec, params, state, xs, step_kwargs.get("spike_fn", sigmoid4x), step_kwargs.get("quant_fn", "bernoulli")
        )
    return custom_reason(step, params, state, xs, **step_kwargs)
