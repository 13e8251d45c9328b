"""Trace one neuron step into a scalar expression graph, and derive its reverse-mode adjoint.

The kernels never restate the neuron maths: :func:`trace_step` runs the functional core's own
``_generic_step`` on symbolic scalars (:class:`Sym`), which record every operation the step
performs (arithmetic, comparisons, ``torch.where``, the spike function's ``torch.sigmoid`` /
``torch.atan`` / ``torch.erf`` / ``torch.clamp`` / ``abs``, and the quantizer) as a node of a
:class:`Graph`. The graph is straight-line code for one neuron and one timestep; the backends
print it as C or Triton inside their time loops.

:func:`adjoint` derives the backward of that code, one rule per operation (the rules are the
derivatives torch's autograd applies to the same ops, so the kernel's gradients are the plain
step's): given the adjoints of the step's outputs (the output ``y`` and the new state), it
yields the adjoints of its inputs (``x``, the old state, every param).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..neurons import NeuronSpec, _generic_step

__all__ = ["Node", "Graph", "Sym", "TraceError", "trace_step", "adjoint"]

#: ops whose value is a boolean (no gradient flows through them)
BOOLEAN = {"ge", "gt", "le", "lt", "eq", "ne", "isnan", "and", "or", "not"}


class TraceError(TypeError):
    """The step used an operation the kernel generator does not know."""


@dataclass(frozen=True)
class Node:
    """One operation: ``op`` on the nodes ``args`` (ids); ``attr`` holds constants (a leaf index, a value)."""

    op: str
    args: tuple[int, ...] = ()
    attr: Any = None


@dataclass
class Graph:
    """Straight-line code of one step: nodes in topological order, shared where equal (CSE)."""

    nodes: list[Node] = field(default_factory=list)
    index: dict[Node, int] = field(default_factory=dict)
    quant_sites: int = 0

    def add(self, op: str, args: tuple[int, ...] = (), attr: Any = None) -> int:
        node = Node(op, args, attr)
        if op != "quant" and node in self.index:  # every quantizer call is its own draw
            return self.index[node]
        self.nodes.append(node)
        self.index[node] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def const(self, value: float) -> int:
        return self.add("const", (), float(value))


class Sym:
    """A symbolic scalar of a :class:`Graph`: every operation on it adds a node."""

    __slots__ = ("g", "i")

    def __init__(self, g: Graph, i: int) -> None:
        self.g, self.i = g, i

    # ---- helpers ----
    def _lift(self, v: Any) -> int:
        if isinstance(v, Sym):
            return v.i
        if isinstance(v, (bool, int, float)):
            return self.g.const(float(v))
        raise TraceError(f"kernel trace: cannot combine a symbolic value with {type(v).__name__}")

    def _op(self, op: str, *others: Any, attr: Any = None) -> Sym:
        return Sym(self.g, self.g.add(op, (self.i, *(self._lift(o) for o in others)), attr))

    def _rop(self, op: str, other: Any) -> Sym:
        return Sym(self.g, self.g.add(op, (self._lift(other), self.i)))

    # ---- arithmetic ----
    def __add__(self, o):
        return self._op("add", o)

    def __radd__(self, o):
        return self._rop("add", o)

    def __sub__(self, o):
        return self._op("sub", o)

    def __rsub__(self, o):
        return self._rop("sub", o)

    def __mul__(self, o):
        return self._op("mul", o)

    def __rmul__(self, o):
        return self._rop("mul", o)

    def __truediv__(self, o):
        return self._op("div", o)

    def __rtruediv__(self, o):
        return self._rop("div", o)

    def __neg__(self):
        return self._op("neg")

    def __pos__(self):
        return self

    def abs(self):
        return self._op("abs")

    __abs__ = abs

    # ---- comparisons ----
    def __ge__(self, o):
        return self._op("ge", o)

    def __gt__(self, o):
        return self._op("gt", o)

    def __le__(self, o):
        return self._op("le", o)

    def __lt__(self, o):
        return self._op("lt", o)

    def __eq__(self, o):  # type: ignore[override]
        return self._op("eq", o)

    def __ne__(self, o):  # type: ignore[override]
        return self._op("ne", o)

    def __and__(self, o):
        return self._op("and", o)

    def __or__(self, o):
        return self._op("or", o)

    def __invert__(self):
        return self._op("not")

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self):
        raise TraceError("kernel trace: the step branches on a tensor value (Python control flow)")

    # ---- torch functions ----
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        unary = {"sigmoid": "sigmoid", "exp": "exp", "atan": "atan", "erf": "erf", "abs": "abs", "isnan": "isnan"}
        if name in unary and len(args) == 1 and not kwargs:
            return args[0]._op(unary[name])
        if name == "neg" and len(args) == 1:
            return -args[0]
        if name == "where" and len(args) == 3 and not kwargs:
            cond, a, b = args
            if not isinstance(cond, Sym):
                raise TraceError("kernel trace: torch.where needs a symbolic condition")
            return cond._op("where", a, b)
        if name == "clamp":
            v = args[0]
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            if not all(isinstance(c, (int, float)) for c in (lo, hi)):
                raise TraceError("kernel trace: clamp needs constant bounds")
            return v._op("clamp", attr=(float(lo), float(hi)))
        if name in ("zeros_like", "ones_like") and len(args) == 1:
            return Sym(args[0].g, args[0].g.const(0.0 if name == "zeros_like" else 1.0))
        for op, sym_method in (("add", "__add__"), ("sub", "__sub__"), ("mul", "__mul__"), ("div", "__truediv__")):
            if name == op and len(args) == 2 and not kwargs:
                a, b = args
                return getattr(a, sym_method)(b) if isinstance(a, Sym) else getattr(b, "__r" + sym_method[2:])(a)
        raise TraceError(f"kernel trace: {name} is not supported by the kernel generator")


def _quantizer(g: Graph) -> Callable[[Sym], Sym]:
    def quant(p: Sym) -> Sym:
        site = g.quant_sites
        g.quant_sites += 1
        return p._op("quant", attr=site)

    return quant


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
    as_id = lambda v: v.i if isinstance(v, Sym) else g.const(float(v))  # noqa: E731
    return Traced(g, x.i, tuple(s.i for s in state), tuple(p.i for p in params), as_id(y), tuple(map(as_id, new)))


# ---- reverse mode --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adjoint:
    """The backward of a traced step, as expressions over forward node values and adjoints.

    ``terms[n]`` lists the expressions summed into the adjoint of node ``n``; ``order`` is the
    order (reverse topological) in which adjoints are final and may be printed. Expressions are
    small tuples: ``("mul", a, b)`` of operands ``("v", n)`` (forward value), ``("g", n)``
    (adjoint), ``("c", float)`` (constant); see the backends' printers.
    """

    terms: dict[int, list[tuple]]
    order: tuple[int, ...]


def _v(n: int) -> tuple:
    return ("v", n)


def adjoint(tr: Traced, quant: str) -> Adjoint:
    """Derive the adjoint of every node from the adjoints of ``y`` and the new state.

    ``quant`` is the quantizer's name: ``"round"`` and ``"bernoulli"`` pass the gradient straight
    through, ``"probabilistic"`` multiplies it by ``2p``.
    """
    nodes = tr.graph.nodes
    terms: dict[int, list[tuple]] = {}
    terms.setdefault(tr.y, []).append(("seed_y",))
    for k, n in enumerate(tr.new_state):
        terms.setdefault(n, []).append(("seed_state", k))
    order = []
    for n in range(len(nodes) - 1, -1, -1):
        if n not in terms:
            continue
        node = nodes[n]
        if node.op in BOOLEAN or node.op in ("const",):
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
            add(a[0], ("mul", ("mul", g, ("sub", ("c", 1.0), _v(n))), _v(n)))
        elif op == "exp":
            add(a[0], ("mul", g, _v(n)))
        elif op == "atan":
            add(a[0], ("div", g, ("add", ("c", 1.0), ("mul", _v(a[0]), _v(a[0])))))
        elif op == "erf":
            c = ("c", 2.0 / math.sqrt(math.pi))
            add(a[0], ("mul", ("mul", g, c), ("exp", ("neg", ("mul", _v(a[0]), _v(a[0]))))))
        elif op == "clamp":
            lo, hi = node.attr
            add(a[0], ("select", ("inside", _v(a[0]), lo, hi), g, ("c", 0.0)))
        elif op == "where":
            add(a[1], ("select", _v(a[0]), g, ("c", 0.0)))
            add(a[2], ("select", _v(a[0]), ("c", 0.0), g))
        elif op == "quant":
            add(a[0], ("mul", g, ("mul", ("c", 2.0), _v(a[0]))) if quant == "probabilistic" else g)
        elif op in ("x", "state", "param"):
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
