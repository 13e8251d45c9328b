"""Trace one neuron step into a scalar expression graph, and derive its reverse-mode adjoint.

The kernels never restate the neuron maths: :func:`trace_step` runs the functional core's own
``_generic_step`` on symbolic scalars (:class:`Sym`), and :func:`trace_custom` runs a user's own
step (a function passed to ``scan``, a ``TTLayer.step``) the same way. A :class:`Sym` records
every operation the step performs as a node of a :class:`Graph`: arithmetic, comparisons, the
elementwise torch functions of :data:`ELEMENTWISE` (``tanh``, ``log``, ``clamp`` with symbolic
bounds, ``where`` on mixed operands, ...), the quantizers, and every call of a
``torch.autograd.Function`` (its ``forward`` traced as the value, its ``backward`` as the
derivative). The graph is straight-line code for one neuron and one timestep; the backends print
it as C or Triton inside their time loops.

An operation the graph cannot hold (a matmul, a reduction or indexing across neurons, Python
branching on a value, reading a shape, a tensor captured from outside the step, an unknown
function) raises :class:`TraceError`, whose message names it; the caller then runs the plain loop
and says why (:func:`tracetorch.functional.kernels.explain`).

:func:`adjoint` derives the backward of that code, one rule per operation (the rules are the
derivatives torch's autograd applies to the same ops, so the kernel's gradients are the plain
step's): given the adjoints of the step's outputs (the output ``y`` and the new state), it
yields the adjoints of its inputs (``x``, the old state, every param).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..neurons import NeuronSpec, _generic_step

__all__ = ["Node", "Graph", "Sym", "TraceError", "trace_step", "trace_custom", "adjoint", "graph_key", "ELEMENTWISE"]

#: ops whose value is a boolean (no gradient flows through them)
BOOLEAN = {"ge", "gt", "le", "lt", "eq", "ne", "isnan", "and", "or", "not"}
#: ops whose derivative is zero wherever it exists (as torch's autograd gives them)
FLAT = {"sign", "floor", "ceil", "round", "float", "detach"}


class TraceError(TypeError):
    """The step used an operation the kernel generator does not know (the message names it)."""


class _TraceAttributeError(TraceError, AttributeError):
    """A tensor attribute or method a symbolic scalar does not have (``hasattr`` reads it as absent)."""


@dataclass(frozen=True)
class Node:
    """One operation: ``op`` on the nodes ``args`` (ids); ``attr`` holds constants (a leaf index, a value)."""

    op: str
    args: tuple[int, ...] = ()
    attr: Any = None


@dataclass
class Graph:
    """Straight-line code of one step: nodes in topological order, shared where equal (CSE).

    ``quant_kind`` is the random quantizer a custom step calls (``"bernoulli"`` or
    ``"probabilistic"``, ``None`` if none); ``captured`` the one-element tensors from outside the
    step read as constants, with their version counters (a change to one invalidates a cached trace).
    """

    nodes: list[Node] = field(default_factory=list)
    index: dict[Node, int] = field(default_factory=dict)
    quant_sites: int = 0
    quant_kind: str | None = None
    captured: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    calls: int = 0
    casts: set[torch.dtype] = field(default_factory=set)

    def add(self, op: str, args: tuple[int, ...] = (), attr: Any = None) -> int:
        node = Node(op, args, attr)
        if op not in ("quant", "cotangent") and node in self.index:  # every quantizer call is its own draw
            return self.index[node]
        self.nodes.append(node)
        self.index[node] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def const(self, value: float) -> int:
        return self.add("const", (), float(value))

    def is_bool(self, i: int) -> bool:
        return self.nodes[i].op in BOOLEAN


#: torch functions and Tensor methods a step may call, by name (see :func:`_torch_op`)
ELEMENTWISE = (
    "add sub mul div true_divide neg negative abs sigmoid exp atan erf isnan tanh log log1p sqrt rsqrt "
    "pow square reciprocal relu sign floor ceil round heaviside maximum minimum max min fmax fmin clamp clip "
    "clamp_min clamp_max where softplus log_sigmoid logsigmoid zeros_like ones_like full_like "
    "gt ge lt le eq ne greater greater_equal less less_equal logical_and logical_or logical_not "
    "float double half bfloat16 to type_as detach clone contiguous"
).split()

_MIXING = {
    "sum": "a reduction", "mean": "a reduction", "prod": "a reduction", "std": "a reduction",
    "var": "a reduction", "norm": "a reduction", "amax": "a reduction", "amin": "a reduction",
    "logsumexp": "a reduction", "cumsum": "a scan across neurons", "cumprod": "a scan across neurons",
    "softmax": "a reduction", "log_softmax": "a reduction", "matmul": "a matmul", "mm": "a matmul",
    "bmm": "a matmul", "linear": "a matmul", "einsum": "a matmul", "__matmul__": "a matmul",
    "__rmatmul__": "a matmul", "conv1d": "a convolution", "conv2d": "a convolution",
    "__getitem__": "indexing", "__setitem__": "indexing", "index_select": "indexing", "gather": "indexing",
    "roll": "indexing across neurons", "flip": "indexing across neurons", "cat": "a concatenation",
    "stack": "a concatenation", "reshape": "a reshape", "view": "a reshape", "transpose": "a reshape",
    "permute": "a reshape", "unsqueeze": "a reshape", "squeeze": "a reshape", "expand": "a reshape",
}  # fmt: skip


def _describe_unknown(name: str) -> str:
    if name in _MIXING:
        return f"{name} is {_MIXING[name]}: it mixes neurons, the kernels run one neuron at a time"
    if name in ("shape", "size", "dim", "numel", "ndim", "device", "is_cuda", "requires_grad"):
        return f"the step reads the tensor's {name}; a kernel step is one scalar per neuron, with no shape"
    if name.endswith("_") and not name.startswith("_"):
        return f"{name} writes in place; a pure step returns new tensors"
    if name in ("bernoulli", "rand", "rand_like", "randn", "randn_like", "normal", "uniform_"):
        return f"{name} draws random numbers; the kernels draw only inside the named quantizers"
    return f"{name} is not an elementwise operation the kernel generator knows"


class Sym:
    """A symbolic scalar of a :class:`Graph`: every operation on it adds a node."""

    __slots__ = ("g", "i")

    def __init__(self, g: Graph, i: int) -> None:
        self.g, self.i = g, i

    # ---- helpers ----
    def _lift(self, v: Any) -> int:
        return _lift(self.g, v)

    def _real(self) -> Sym:
        """This value as a real number (a boolean is cast, as ``mask.float()`` does)."""
        return Sym(self.g, self.g.add("float", (self.i,))) if self.g.is_bool(self.i) else self

    def _op(self, op: str, *others: Any, attr: Any = None) -> Sym:
        return Sym(self.g, self.g.add(op, (self.i, *(self._lift(o) for o in others)), attr))

    def _arith(self, op: str, other: Any, reverse: bool = False) -> Sym:
        g = self.g
        if g.is_bool(self.i) and isinstance(other, Sym) and g.is_bool(other.i):
            raise TraceError(f"kernel trace: arithmetic ({op}) of two booleans; cast one with .to(x.dtype)")
        if isinstance(other, (bool, int, float)):
            if g.is_bool(self.i):  # torch computes a mask times a Python number in the default dtype
                g.casts.add(torch.get_default_dtype())
            elif g.nodes[self.i].op == "float" and g.nodes[self.i].attr is not None:  # mask.float() * 0.3
                g.casts.add(g.nodes[self.i].attr)
        a, b = self._real().i, _real_id(g, other)
        return Sym(self.g, self.g.add(op, (b, a) if reverse else (a, b)))

    def _cmp(self, op: str, other: Any) -> Sym:
        return Sym(self.g, self.g.add(op, (self._real().i, _real_id(self.g, other))))

    def _logic(self, op: str, other: Any) -> Sym:
        b = self._lift(other)
        if not (self.g.is_bool(self.i) and self.g.is_bool(b)):
            raise TraceError(f"kernel trace: '{op}' (& | ~) needs boolean operands (comparisons), not real values")
        return Sym(self.g, self.g.add(op, (self.i, b)))

    # ---- arithmetic ----
    def __add__(self, o):
        return self._arith("add", o)

    def __radd__(self, o):
        return self._arith("add", o, True)

    def __sub__(self, o):
        return self._arith("sub", o)

    def __rsub__(self, o):
        return self._arith("sub", o, True)

    def __mul__(self, o):
        return self._arith("mul", o)

    def __rmul__(self, o):
        return self._arith("mul", o, True)

    def __truediv__(self, o):
        return self._arith("div", o)

    def __rtruediv__(self, o):
        return self._arith("div", o, True)

    def __pow__(self, o):
        return _pow(self, o)

    def __rpow__(self, o):
        raise TraceError(
            "kernel trace: a power with a symbolic exponent (c ** x) is not supported; write exp(x * log(c))"
        )

    def __neg__(self):
        if self.g.is_bool(self.i):
            raise TraceError("kernel trace: negation of a boolean (torch refuses it too)")
        return self._op("neg")

    def __pos__(self):
        return self

    def abs(self):
        return self._real()._op("abs")

    __abs__ = abs

    def __matmul__(self, o):
        raise TraceError(f"kernel trace: {_describe_unknown('matmul')}")

    __rmatmul__ = __matmul__

    def __getitem__(self, key):
        raise TraceError(f"kernel trace: {_describe_unknown('__getitem__')}")

    def __iter__(self):
        raise TraceError("kernel trace: iterating over a tensor reads its shape; a kernel step has none")

    def __len__(self):
        raise TraceError(f"kernel trace: {_describe_unknown('shape')}")

    # ---- comparisons ----
    def __ge__(self, o):
        return self._cmp("ge", o)

    def __gt__(self, o):
        return self._cmp("gt", o)

    def __le__(self, o):
        return self._cmp("le", o)

    def __lt__(self, o):
        return self._cmp("lt", o)

    def __eq__(self, o):  # type: ignore[override]
        return self._cmp("eq", o)

    def __ne__(self, o):  # type: ignore[override]
        return self._cmp("ne", o)

    def __and__(self, o):
        return self._logic("and", o)

    __rand__ = __and__

    def __or__(self, o):
        return self._logic("or", o)

    __ror__ = __or__

    def __invert__(self):
        if not self.g.is_bool(self.i):
            raise TraceError("kernel trace: '~' needs a boolean operand (a comparison), not a real value")
        return self._op("not")

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self):
        raise TraceError("kernel trace: the step branches on a tensor value (Python control flow: if, and, or, while)")

    def __float__(self):
        raise TraceError("kernel trace: the step reads a tensor value as a Python number (float(), .item())")

    __int__ = __index__ = __float__

    @property
    def dtype(self) -> str:
        """A stand-in for ``tensor.dtype`` (``x.to(state.mem.dtype)`` is a no-op in the trace)."""
        return "symbolic"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "where":  # Tensor.where(condition, other) is torch.where(condition, self, other)
            return lambda condition, other: _where(condition, self, other)
        if name in _TORCH:
            handler = _TORCH[name]
            return lambda *args, **kwargs: handler(self, *args, **kwargs)
        raise _TraceAttributeError(f"kernel trace: {_describe_unknown(name)}")

    # ---- torch functions ----
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        handler = _TORCH.get(name)
        if handler is None:
            raise TraceError(f"kernel trace: {_describe_unknown(name)}")
        return handler(*args, **(kwargs or {}))


def _graph_of(*values: Any) -> Graph:
    for v in values:
        if isinstance(v, Sym):
            return v.g
    raise TraceError("kernel trace: an operation without a symbolic operand")  # pragma: no cover


def _lift(g: Graph, v: Any) -> int:
    """The node id of ``v``: a symbolic value, a Python number, or a one-element tensor from outside the step."""
    if isinstance(v, Sym):
        if v.g is not g:
            raise TraceError("kernel trace: values of two traces mixed")  # pragma: no cover
        return v.i
    if isinstance(v, (bool, int, float)):
        return g.const(float(v))
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.requires_grad or not (v.is_floating_point() or v.dtype == torch.bool):
            raise TraceError(
                f"kernel trace: the step uses a tensor of shape {list(v.shape)} that is not one of its params, "
                "its state or its input (captured from outside the step); pass it in the params"
            )
        g.captured.append((v, v._version))
        return g.const(float(v.item()))
    raise TraceError(f"kernel trace: cannot combine a symbolic value with {type(v).__name__}")


def _real_id(g: Graph, v: Any) -> int:
    i = _lift(g, v)
    return g.add("float", (i,)) if g.is_bool(i) else i


def _sym(g: Graph, v: Any, real: bool = True) -> Sym:
    return Sym(g, _real_id(g, v) if real else _lift(g, v))


def _no_extra(name: str, kwargs: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    extra = sorted(
        k for k, v in kwargs.items() if k not in allowed and v is not None and not (k == "inplace" and v is False)
    )
    if extra:
        raise TraceError(f"kernel trace: {name} with {', '.join(extra)}= is not supported")


def _unary(op: str) -> Callable[..., Sym]:
    def handler(x: Any, **kwargs: Any) -> Sym:
        _no_extra(op, kwargs)
        return _sym(_graph_of(x), x)._op(op)

    return handler


def _binary(op: str) -> Callable[..., Sym]:
    def handler(a: Any, b: Any, *, alpha: Any = None, **kwargs: Any) -> Sym:
        _no_extra(op, kwargs)
        g = _graph_of(a, b)
        if alpha is not None:
            if op not in ("add", "sub"):
                raise TraceError(f"kernel trace: {op} with alpha= is not supported")
            b = _sym(g, b) * alpha
        return _sym(g, a)._arith(op, b)

    return handler


def _compare(op: str) -> Callable[..., Sym]:
    def handler(a: Any, b: Any, **kwargs: Any) -> Sym:
        _no_extra(op, kwargs)
        return _sym(_graph_of(a, b), a)._cmp(op, b)

    return handler


def _logical(op: str) -> Callable[..., Sym]:
    def handler(a: Any, b: Any = None, **kwargs: Any) -> Sym:
        _no_extra(op, kwargs)
        g = _graph_of(a, b)
        a = _sym(g, a, real=False)
        if op == "not":
            return ~a
        return a._logic(op, b)

    return handler


def _pow(x: Any, c: Any, **kwargs: Any) -> Sym:
    _no_extra("pow", kwargs)
    if isinstance(c, Sym) or not isinstance(x, Sym):
        raise TraceError("kernel trace: pow needs a constant exponent (x ** 2.0), not a symbolic one")
    if not isinstance(c, (int, float)) or isinstance(c, bool):
        raise TraceError(f"kernel trace: pow needs a Python number as exponent, received {type(c).__name__}")
    c = float(c)
    if c == 1.0:
        return x._real()
    return x._real()._op("pow", attr=c)


def _binary_pick(op: str) -> Callable[..., Sym]:
    def handler(a: Any, b: Any = None, *rest: Any, **kwargs: Any) -> Sym:
        if b is None or rest or kwargs or (op in ("max", "min") and type(b) is int):
            raise TraceError(f"kernel trace: {op} over a dimension is a reduction: it mixes neurons")
        g = _graph_of(a, b)
        node = {"max": "maximum", "min": "minimum", "fmax": "maximum", "fmin": "minimum"}.get(op, op)
        return Sym(g, g.add(node, (_real_id(g, a), _real_id(g, b))))

    return handler


def _clamp(x: Any, min: Any = None, max: Any = None, **kwargs: Any) -> Sym:  # noqa: A002
    _no_extra("clamp", kwargs)
    if min is None and max is None:
        raise TraceError("kernel trace: clamp needs a bound")
    g = _graph_of(x, min, max)
    v = _sym(g, x)
    if not isinstance(min, Sym) and not isinstance(max, Sym):
        lo = -math.inf if min is None else float(g.nodes[_lift(g, min)].attr)
        hi = math.inf if max is None else float(g.nodes[_lift(g, max)].attr)
        return v._op("clamp", attr=(lo, hi))
    lo = g.const(-math.inf) if min is None else _real_id(g, min)
    hi = g.const(math.inf) if max is None else _real_id(g, max)
    return Sym(g, g.add("clampt", (v.i, lo, hi), (min is not None, max is not None)))


def _where(cond: Any, a: Any, b: Any, **kwargs: Any) -> Sym:
    _no_extra("where", kwargs)
    if not isinstance(cond, Sym):
        raise TraceError("kernel trace: torch.where needs a symbolic condition (a comparison of the step's values)")
    if not cond.g.is_bool(cond.i):
        raise TraceError("kernel trace: torch.where needs a boolean condition (a comparison), not a real value")
    g = cond.g
    if isinstance(a, (bool, int, float)) and isinstance(b, (bool, int, float)):
        g.casts.add(torch.get_default_dtype())  # torch.where(c, 1.0, 0.0) is in the default dtype
    return Sym(g, g.add("where", (cond.i, _real_id(g, a), _real_id(g, b))))


def _softplus(x: Any, beta: Any = 1.0, threshold: Any = 20.0, **kwargs: Any) -> Sym:
    _no_extra("softplus", kwargs)
    if not all(isinstance(c, (int, float)) for c in (beta, threshold)):
        raise TraceError("kernel trace: softplus needs constant beta and threshold")
    return _sym(_graph_of(x), x)._op("softplus", attr=(float(beta), float(threshold)))


def _heaviside(x: Any, values: Any, **kwargs: Any) -> Sym:
    _no_extra("heaviside", kwargs)
    g = _graph_of(x, values)
    return Sym(g, g.add("heaviside", (_real_id(g, x), _real_id(g, values))))


def _like(value: float | None) -> Callable[..., Sym]:
    def handler(x: Any, fill_value: Any = None, **kwargs: Any) -> Sym:
        _no_extra("zeros_like", kwargs, ("dtype", "device", "layout", "memory_format", "requires_grad", "pin_memory"))
        g = _graph_of(x)
        v = fill_value if value is None else value
        if isinstance(v, Sym):
            raise TraceError("kernel trace: full_like needs a constant fill value")
        return Sym(g, _lift(g, v))

    return handler


_CASTS = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16}


def _cast(name: str) -> Callable[..., Sym]:
    def handler(x: Any, *args: Any, **kwargs: Any) -> Sym:
        g = _graph_of(x)
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.dtype):
                if not a.is_floating_point:
                    raise TraceError(f"kernel trace: {name} to {a} (an integer or boolean dtype) is not supported")
                g.casts.add(a)
            elif isinstance(a, torch.Tensor):
                g.casts.add(a.dtype)
        if name in _CASTS:
            target = _CASTS[name]
            if isinstance(x, Sym) and g.is_bool(x.i):  # exact (0 or 1); its dtype shows in what it meets next
                return Sym(g, g.add("float", (x.i,), target))
            g.casts.add(target)
        return _sym(g, x)

    return handler


def _identity_op(op: str) -> Callable[..., Sym]:
    def handler(x: Any, **kwargs: Any) -> Sym:
        _no_extra(op, kwargs, ("memory_format",))
        s = _sym(_graph_of(x), x, real=False)
        return s._op("detach") if op == "detach" and not s.g.is_bool(s.i) else s

    return handler


def _round(x: Any, decimals: int = 0, **kwargs: Any) -> Sym:
    _no_extra("round", kwargs)
    if decimals:
        raise TraceError("kernel trace: round with decimals= is not supported")
    return _sym(_graph_of(x), x)._op("round")


def _neg(x: Any, **kwargs: Any) -> Sym:
    _no_extra("neg", kwargs)
    return -_sym(_graph_of(x), x, real=False)


_TORCH: dict[str, Callable[..., Any]] = {
    **{n: _unary(n) for n in ("sigmoid", "exp", "atan", "erf", "abs", "tanh", "log", "log1p", "sqrt", "rsqrt")},
    **{n: _unary(n) for n in ("relu", "sign", "floor", "ceil")},
    "isnan": lambda x, **kw: _sym(_graph_of(x), x)._op("isnan"),
    "round": _round,
    "neg": _neg,
    "negative": _neg,
    **{n: _binary(n) for n in ("add", "sub", "mul", "div")},
    "true_divide": _binary("div"),
    "__add__": _binary("add"), "__radd__": lambda a, b: _binary("add")(b, a),
    "__sub__": _binary("sub"), "__rsub__": lambda a, b: _binary("sub")(b, a),
    "__mul__": _binary("mul"), "__rmul__": lambda a, b: _binary("mul")(b, a),
    "__truediv__": _binary("div"), "__rtruediv__": lambda a, b: _binary("div")(b, a),
    "square": lambda x, **kw: _pow(_sym(_graph_of(x), x), 2.0),
    "reciprocal": lambda x, **kw: 1.0 / _sym(_graph_of(x), x),
    "pow": _pow,
    "__pow__": _pow,
    **{n: _compare(m) for n, m in (("gt", "gt"), ("ge", "ge"), ("lt", "lt"), ("le", "le"), ("eq", "eq"),
                                   ("ne", "ne"), ("greater", "gt"), ("greater_equal", "ge"), ("less", "lt"),
                                   ("less_equal", "le"))},
    "logical_and": _logical("and"), "logical_or": _logical("or"), "logical_not": _logical("not"),
    **{n: _binary_pick(n) for n in ("maximum", "minimum", "max", "min", "fmax", "fmin")},
    "clamp": _clamp, "clip": _clamp,
    "clamp_min": lambda x, min: _clamp(x, min=min), "clamp_max": lambda x, max: _clamp(x, max=max),  # noqa: A006
    "where": _where,
    "softplus": _softplus,
    "log_sigmoid": _unary("logsigmoid"), "logsigmoid": _unary("logsigmoid"),
    "heaviside": _heaviside,
    "zeros_like": _like(0.0), "ones_like": _like(1.0), "full_like": _like(None),
    **{n: _cast(n) for n in ("float", "double", "half", "bfloat16", "to", "type_as")},
    **{n: _identity_op(n) for n in ("detach", "clone", "contiguous")},
}  # fmt: skip


def _quantizer(g: Graph) -> Callable[[Sym], Sym]:
    def quant(p: Sym) -> Sym:
        site = g.quant_sites
        g.quant_sites += 1
        return p._op("quant", attr=site)

    return quant


# ---- torch.autograd.Function calls --------------------------------------------------------------


class _Ctx:
    """The ``ctx`` an ``autograd.Function`` sees while traced: it keeps what ``forward`` saves."""

    def __init__(self, n_inputs: int) -> None:
        self.saved_tensors: tuple[Any, ...] = ()
        self.needs_input_grad = (True,) * n_inputs
        self.materialize_grads = True

    def save_for_backward(self, *values: Any) -> None:
        self.saved_tensors = values

    def save_for_forward(self, *values: Any) -> None:
        pass

    def mark_non_differentiable(self, *values: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = value

    def mark_dirty(self, *values: Any) -> None:
        raise TraceError("kernel trace: an autograd.Function that writes its input in place (mark_dirty)")


def _trace_function(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One call of ``cls.apply`` on symbolic values: the forward as the value, the backward as the derivative."""
    from ..spikes import _BernoulliST, _ProbabilisticST

    g = _graph_of(*args, *kwargs.values())
    if cls in (_BernoulliST, _ProbabilisticST):
        kind = "bernoulli" if cls is _BernoulliST else "probabilistic"
        if g.quant_kind not in (None, kind):
            raise TraceError(
                f"kernel trace: the step calls both {g.quant_kind} and {kind} quantizers; a kernel draws one kind"
            )
        g.quant_kind = kind
        return _quantizer(g)(_sym(g, args[0]))
    if _is_setup_context_defined(cls.setup_context):
        sig_args, sig_kwargs = _bind(cls.forward, args, kwargs)
        out = cls.forward(*sig_args, **sig_kwargs)
        ctx = _Ctx(len(sig_args))
        cls.setup_context(ctx, sig_args, out)
        inputs = sig_args
    else:
        if kwargs:
            raise TraceError(f"kernel trace: {cls.__name__}.apply with keyword arguments")
        ctx = _Ctx(len(args))
        out = cls.forward(ctx, *args)
        inputs = args
    if not isinstance(out, Sym):
        raise TraceError(f"kernel trace: {cls.__name__}.forward must return one tensor computed from its input")
    ct = g.add("cotangent", (), g.calls)
    g.calls += 1
    grads = cls.backward(ctx, Sym(g, ct))
    grads = grads if isinstance(grads, tuple) else (grads,)
    ids, grad_ids = [], []
    for k, a in enumerate(inputs):
        if not isinstance(a, Sym):
            continue
        gk = grads[k] if k < len(grads) else None
        ids.append(a.i)
        grad_ids.append(-1 if gk is None else _real_id(g, gk))
    return Sym(g, g.add("fn", (out._real().i, *ids), (ct, tuple(grad_ids), cls.__qualname__)))


def _bind(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
    import inspect

    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.args, bound.kwargs


def _is_setup_context_defined(fn: Any) -> bool:
    return fn is not torch.autograd.function._SingleLevelFunction.setup_context


_ORIGINAL_APPLY = torch.autograd.Function.__dict__["apply"]
_INTERCEPT = threading.RLock()
_DEPTH = [0]


def _apply(cls, *args, **kwargs):
    if any(isinstance(a, Sym) for a in (*args, *kwargs.values())):
        return _trace_function(cls, args, kwargs)
    return _ORIGINAL_APPLY.__func__(cls, *args, **kwargs)


@contextmanager
def _functions_traced():
    """While a step is traced, ``autograd.Function.apply`` on symbolic values records the call.

    Calls on tensors (any thread) go to torch's own ``apply`` unchanged; the class attribute is
    restored when the last trace ends. Traces are serialized by a lock.
    """
    with _INTERCEPT:
        if _DEPTH[0] == 0:
            torch.autograd.Function.apply = classmethod(_apply)  # type: ignore[method-assign]
        _DEPTH[0] += 1
        try:
            yield
        finally:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                torch.autograd.Function.apply = _ORIGINAL_APPLY  # type: ignore[method-assign]


@dataclass(frozen=True)
class Traced:
    """A traced step: the graph, its leaves and its outputs (node ids)."""

    graph: Graph
    x: int
    state: tuple[int, ...]
    params: tuple[int, ...]
    y: int
    new_state: tuple[int, ...]


def trace_step(spec: NeuronSpec, spike_fn: Callable[[Any], Any]) -> Traced:
    """Run ``_generic_step(spec, ...)`` on symbolic scalars; ``spike_fn`` is applied symbolically too.

    Raises :class:`TraceError` if the step (or ``spike_fn``) uses an operation the generator does
    not know.
    """
    g = Graph()
    x = Sym(g, g.add("x"))
    state = [Sym(g, g.add("state", (), k)) for k in range(len(spec.state_names))]
    params = [Sym(g, g.add("param", (), k)) for k in range(len(spec.param_names))]
    y, new = _generic_step(spec, spec.Params(*params), spec.State(*state), x, spike_fn, _quantizer(g))
    as_id = lambda v: _real_id(g, v)  # noqa: E731
    return Traced(g, x.i, tuple(s.i for s in state), tuple(p.i for p in params), as_id(y), tuple(map(as_id, new)))


def trace_custom(
    step: Callable[..., Any], n_state: int, n_params: int, rebuild: Callable[..., Any]
) -> tuple[Traced, Any]:
    """Run a user's ``step`` on symbolic scalars.

    ``rebuild(param_syms, state_syms, x_sym)`` calls the step with the symbolic leaves put back in
    the user's pytrees and returns ``(y, flat new state leaves, new state treedef)``. Returns the
    traced step and the treedef. Raises :class:`TraceError` (the message names the operation).
    """
    g = Graph()
    x = Sym(g, g.add("x"))
    state = [Sym(g, g.add("state", (), k)) for k in range(n_state)]
    params = [Sym(g, g.add("param", (), k)) for k in range(n_params)]
    with _functions_traced():
        y, new, treedef = rebuild(params, state, x)
    if not isinstance(y, (Sym, int, float)) or isinstance(y, bool):
        raise TraceError(f"kernel trace: the step's output must be one tensor, received {type(y).__name__}")
    for v in new:
        if not isinstance(v, (Sym, int, float)) or isinstance(v, bool):
            raise TraceError(f"kernel trace: a new state leaf is a {type(v).__name__}, not a tensor of the step")
    as_id = lambda v: _real_id(g, v)  # noqa: E731
    tr = Traced(g, x.i, tuple(s.i for s in state), tuple(p.i for p in params), as_id(y), tuple(map(as_id, new)))
    for n in (tr.y, *tr.new_state):  # an output in another dtype (y = mask.float())
        if g.nodes[n].op == "float" and g.nodes[n].attr is not None:
            g.casts.add(g.nodes[n].attr)
    return tr, treedef


def graph_key(tr: Traced, quant: str) -> str:
    """A hash of what a traced step computes (its graph, leaves and outputs) and its quantizer."""

    def attr(a: Any) -> Any:
        if isinstance(a, float):
            return a.hex()
        if isinstance(a, tuple):
            return tuple(attr(b) for b in a)
        return a

    text = repr(
        ([(n.op, n.args, attr(n.attr)) for n in tr.graph.nodes], tr.x, tr.state, tr.params, tr.y, tr.new_state, quant)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def backward_only(tr: Traced) -> set[int]:
    """Nodes that read an ``autograd.Function``'s incoming gradient: they exist in the backward only."""
    out: set[int] = set()
    for n, node in enumerate(tr.graph.nodes):
        if node.op == "cotangent" or any(a in out for a in node.args):
            out.add(n)
    return out


# ---- reverse mode --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adjoint:
    """The backward of a traced step, as expressions over forward node values and adjoints.

    ``terms[n]`` lists the expressions summed into the adjoint of node ``n``; ``order`` is the
    order (reverse topological) in which adjoints are final and may be printed. Expressions are
    small tuples: ``("mul", a, b)`` of operands ``("v", n)`` (forward value), ``("g", n)``
    (adjoint), ``("c", float)`` (constant), and ``("op", name, attr, *operands)`` (any node
    operation applied to operands); see the backends' printers.
    """

    terms: dict[int, list[tuple]]
    order: tuple[int, ...]


def _v(n: int) -> tuple:
    return ("v", n)


def _c(x: float) -> tuple:
    return ("c", float(x))


def _sel(cond: tuple, a: tuple, b: tuple) -> tuple:
    return ("select", cond, a, b)


def _o(op: str, *args: tuple, attr: Any = None) -> tuple:
    return ("op", op, attr, *args)


def _as_term(nodes: list[Node], bwd: set[int], n: int, fn: int) -> tuple:
    """Node ``n`` of an ``autograd.Function``'s traced backward as an expression: forward nodes by
    value, its incoming gradient (the cotangent) as the adjoint of the call ``fn``."""
    if n not in bwd:
        return _v(n)
    node = nodes[n]
    if node.op == "cotangent":
        return ("g", fn)
    return _o(node.op, *(_as_term(nodes, bwd, a, fn) for a in node.args), attr=node.attr)


def adjoint(tr: Traced, quant: str) -> Adjoint:
    """Derive the adjoint of every node from the adjoints of ``y`` and the new state.

    ``quant`` is the quantizer's name: ``"round"`` and ``"bernoulli"`` pass the gradient straight
    through, ``"probabilistic"`` multiplies it by ``2p``. Raises :class:`TraceError` where a
    gradient reaches an op torch's autograd cannot differentiate (``heaviside``).
    """
    nodes = tr.graph.nodes
    bwd = backward_only(tr)
    terms: dict[int, list[tuple]] = {}
    terms.setdefault(tr.y, []).append(("seed_y",))
    for k, n in enumerate(tr.new_state):
        terms.setdefault(n, []).append(("seed_state", k))
    order = []
    for n in range(len(nodes) - 1, -1, -1):
        if n not in terms:
            continue
        node = nodes[n]
        if node.op in BOOLEAN or node.op in FLAT or node.op in ("const",):
            continue
        order.append(n)
        g = ("g", n)
        a = node.args

        def add(i: int, expr: tuple) -> None:
            terms.setdefault(i, []).append(expr)

        op = node.op
        if op == "add":
            add(a[0], g)
            add(a[1], g)
        elif op == "sub":
            add(a[0], g)
            add(a[1], ("neg", g))
        elif op == "mul":
            add(a[0], ("mul", g, _v(a[1])))
            add(a[1], ("mul", g, _v(a[0])))
        elif op == "div":
            add(a[0], ("div", g, _v(a[1])))
            add(a[1], ("neg", ("div", ("mul", g, _v(n)), _v(a[1]))))
        elif op == "neg":
            add(a[0], ("neg", g))
        elif op == "abs":
            add(a[0], ("mul", g, ("sign", _v(a[0]))))
        elif op == "sigmoid":
            add(a[0], ("mul", ("mul", g, ("sub", _c(1.0), _v(n))), _v(n)))
        elif op == "exp":
            add(a[0], ("mul", g, _v(n)))
        elif op == "atan":
            add(a[0], ("div", g, ("add", _c(1.0), ("mul", _v(a[0]), _v(a[0])))))
        elif op == "erf":
            c = _c(2.0 / math.sqrt(math.pi))
            add(a[0], ("mul", ("mul", g, c), ("exp", ("neg", ("mul", _v(a[0]), _v(a[0]))))))
        elif op == "tanh":  # torch: grad * (1 - y^2)
            add(a[0], ("mul", g, ("sub", _c(1.0), ("mul", _v(n), _v(n)))))
        elif op == "log":
            add(a[0], ("div", g, _v(a[0])))
        elif op == "log1p":
            add(a[0], ("div", g, ("add", _v(a[0]), _c(1.0))))
        elif op == "sqrt":  # torch: grad / (2 * result)
            add(a[0], ("div", g, ("mul", _c(2.0), _v(n))))
        elif op == "rsqrt":  # torch: -0.5 * grad * result^3
            add(a[0], ("mul", ("mul", _c(-0.5), g), _o("pow", _v(n), attr=3.0)))
        elif op == "pow":  # torch: grad * (c * x^(c - 1)); zero for c == 0
            c = node.attr
            if c != 0.0:
                dx = _v(a[0]) if c == 2.0 else _o("pow", _v(a[0]), attr=c - 1.0)
                add(a[0], ("mul", g, ("mul", _c(c), dx)))
        elif op == "relu":  # torch: threshold_backward(grad, result, 0)
            add(a[0], _sel(_o("le", _v(n), _c(0.0)), _c(0.0), g))
        elif op in ("maximum", "minimum"):  # torch: ties share the gradient, half each
            tie = _o("eq", _v(a[0]), _v(a[1]))
            half = ("div", g, _c(2.0))
            lose0 = _o("lt" if op == "maximum" else "gt", _v(a[0]), _v(a[1]))
            lose1 = _o("gt" if op == "maximum" else "lt", _v(a[0]), _v(a[1]))
            add(a[0], _sel(tie, half, _sel(lose0, _c(0.0), g)))
            add(a[1], _sel(tie, half, _sel(lose1, _c(0.0), g)))
        elif op == "clamp":
            lo, hi = node.attr
            add(a[0], ("select", ("inside", _v(a[0]), lo, hi), g, _c(0.0)))
        elif op == "clampt":  # torch: clamp_backward and clamp_backward_min_max
            x, lo, hi = (_v(i) for i in a)
            has_lo, has_hi = node.attr
            inside = _o("and", _o("ge", x, lo), _o("le", x, hi))
            if has_lo and has_hi:
                add(a[0], _sel(inside, g, _c(0.0)))
                add(a[1], _sel(_o("and", _o("lt", x, lo), _o("lt", lo, hi)), g, _c(0.0)))
                add(a[2], _sel(_o("or", _o("gt", x, hi), _o("lt", hi, lo)), g, _c(0.0)))
            elif has_lo:
                add(a[0], _sel(_o("ge", x, lo), g, _c(0.0)))
                add(a[1], _sel(_o("lt", x, lo), g, _c(0.0)))
            else:
                add(a[0], _sel(_o("le", x, hi), g, _c(0.0)))
                add(a[2], _sel(_o("gt", x, hi), g, _c(0.0)))
        elif op == "softplus":  # torch: z = exp(x*beta); x*beta > threshold ? grad : grad * z / (z + 1)
            beta, threshold = node.attr
            xb = ("mul", _v(a[0]), _c(beta))
            z = ("exp", xb)
            add(a[0], _sel(_o("gt", xb, _c(threshold)), g, ("div", ("mul", g, z), ("add", z, _c(1.0)))))
        elif op == "logsigmoid":  # torch: z = exp(-|x|); grad * ([x < 0] - sign * z / (1 + z)), sign = +-1
            neg = _o("lt", _v(a[0]), _c(0.0))
            z = ("exp", ("neg", _o("abs", _v(a[0]))))
            zz = ("div", z, ("add", _c(1.0), z))
            add(a[0], ("mul", g, _sel(neg, ("sub", _c(1.0), zz), ("sub", _c(0.0), ("mul", _c(-1.0), zz)))))
        elif op == "heaviside":
            raise TraceError(
                "kernel trace: a gradient reaches heaviside, which torch's autograd cannot differentiate "
                "(wrap it in an autograd.Function with a surrogate backward)"
            )
        elif op == "where":
            add(a[1], ("select", _v(a[0]), g, _c(0.0)))
            add(a[2], ("select", _v(a[0]), _c(0.0), g))
        elif op == "fn":  # an autograd.Function: its traced backward, per input
            ct, grads, _name = node.attr
            for inp, gi in zip(a[1:], grads):
                if gi >= 0:
                    add(inp, _as_term(nodes, bwd, gi, n))
        elif op == "quant":
            add(a[0], ("mul", g, ("mul", _c(2.0), _v(a[0]))) if quant == "probabilistic" else g)
        elif op in ("x", "state", "param", "cotangent"):
            pass
        else:  # pragma: no cover - trace_step only records the ops above
            raise TraceError(f"kernel adjoint: no rule for {op}")
    return Adjoint(terms, tuple(order))


def builtin_spike_kind(spike_fn: Any) -> str | None:
    """The name of a built-in spike function class (exact type), or ``None`` for anything else."""
    from .. import spikes

    for cls in (spikes.Sigmoid, spikes.FastSigmoid, spikes.Atan, spikes.Triangle, spikes.Erf):
        if type(spike_fn) is cls:
            return cls.__name__
    return None
