"""Print a traced step and its adjoint as code: the part the C and Triton backends share.

A backend supplies a :class:`Dialect` (how to spell a constant, a select, ``sigmoid``, the
quantizers' draws, ...); :func:`forward_lines` and :func:`backward_lines` turn the graph of
:mod:`.trace` into straight-line assignments of one timestep for one neuron (C) or one block of
neurons (Triton). The backends wrap them in their time loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .trace import BOOLEAN, Adjoint, Traced, backward_only

__all__ = ["Dialect", "forward_lines", "backward_lines"]


@dataclass(frozen=True)
class Dialect:
    """How a backend spells the graph's operations. Each callable takes operand strings."""

    const: Callable[[float], str]
    select: Callable[[str, str, str], str]
    call: dict[str, Callable[..., str]]  # sigmoid exp atan erf abs isnan tanh log log1p sqrt rsqrt floor ceil
    #                                      round float pow (a, exponent: a Python float)
    quant: Callable[[str, str, int], str]  # (quantizer name, probability, site) -> spike
    declare: Callable[[str, str, bool], str]  # (name, expression, boolean?) -> one statement
    logical: dict[str, str]  # "and" / "or" / "not" spellings
    # "round" of sigmoid(a), spelled from a alone, equal to rounding the backend's own sigmoid for
    # every a (a comparison with the sigmoid's edge); None: round the sigmoid
    round_sigmoid: Callable[[str], str] | None = None


_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_CMP = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "eq": "==", "ne": "!="}


def _node_expr(d: Dialect, op: str, a: list[str], attr, quant: str) -> str:
    if op in _BIN:
        return f"({a[0]} {_BIN[op]} {a[1]})"
    if op in _CMP:
        return f"({a[0]} {_CMP[op]} {a[1]})"
    if op == "neg":
        return f"(-{a[0]})"
    if op == "where":
        return d.select(a[0], a[1], a[2])
    if op == "clamp":
        lo, hi = d.const(attr[0]), d.const(attr[1])
        return d.select(f"({a[0]} < {lo})", lo, d.select(f"({a[0]} > {hi})", hi, a[0]))
    if op == "quant":
        return d.quant(quant, a[0], attr)
    if op in ("and", "or"):
        return f"({a[0]} {d.logical[op]} {a[1]})"
    if op == "not":
        return f"({d.logical['not']}{a[0]})"
    if op in ("detach", "fn"):  # a value unchanged (a Function's value is its traced forward's)
        return a[0]
    zero, one = d.const(0.0), d.const(1.0)
    if op == "relu":  # NaN stays NaN, -0 stays -0 (torch's clamp_min(0))
        return d.select(f"({a[0]} < {zero})", zero, a[0])
    if op == "sign":  # torch: sign(NaN) = 0
        return d.select(f"({a[0]} > {zero})", one, d.select(f"({a[0]} < {zero})", f"(-{one})", zero))
    if op == "heaviside":  # torch: x == 0 ? values : (x > 0)
        return d.select(f"({a[0]} == {zero})", a[1], d.select(f"({a[0]} > {zero})", one, zero))
    if op in ("maximum", "minimum"):  # NaN in either gives NaN
        pick = d.select(f"({a[0]} {'>' if op == 'maximum' else '<'} {a[1]})", a[0], a[1])
        return d.select(f"({a[0]} != {a[0]})", a[0], d.select(f"({a[1]} != {a[1]})", a[1], pick))
    if op == "clampt":  # min(max(x, lo), hi), NaN in any gives NaN
        m = _node_expr(d, "maximum", [a[0], a[1]], None, quant)
        return _node_expr(d, "minimum", [m, a[2]], None, quant)
    if op == "softplus":  # torch: x*beta > threshold ? x : log1p(exp(x*beta)) / beta
        beta, threshold = attr
        xb = f"({a[0]} * {d.const(beta)})"
        return d.select(
            f"({xb} > {d.const(threshold)})", a[0], f"({d.call['log1p'](d.call['exp'](xb))} / {d.const(beta)})"
        )
    if op == "logsigmoid":  # torch: min(x, 0) - log1p(exp(-|x|))
        low = d.select(f"({a[0]} < {zero})", a[0], zero)
        minus_abs = "(-" + d.call["abs"](a[0]) + ")"
        return f"({low} - {d.call['log1p'](d.call['exp'](minus_abs))})"
    if op == "pow":
        return pow_expr(d, a[0], attr)
    return d.call[op](*a)


def pow_expr(d: Dialect, a: str, c: float) -> str:
    """``a ** c`` as torch computes it: products for small integer exponents, ``sqrt`` for 1/2, else ``pow``."""
    one = d.const(1.0)
    if c == 0.0:
        return one
    if c == 0.5:
        return d.call["sqrt"](a)
    if c == -0.5:
        return d.call["rsqrt"](a)
    if c == int(c) and 1 <= abs(c) <= 3:
        prod = " * ".join([a] * int(abs(c)))
        return f"({prod})" if c > 0 else f"({one} / ({prod}))"
    return d.call["pow"](a, c)


def forward_lines(tr: Traced, d: Dialect, quant: str, leaf: Callable[[str, int], str]) -> list[str]:
    """Assignments ``v<n> = ...`` for every node; ``leaf(kind, k)`` spells the inputs (x, state k, param k)."""
    out, nodes = [], tr.graph.nodes
    skip = backward_only(tr)
    for n, node in enumerate(nodes):
        if n in skip:  # an autograd.Function's backward: printed inside the adjoint's expressions
            continue
        if node.op in ("x", "state", "param"):
            expr = leaf(node.op, node.attr or 0)
        elif node.op == "const":
            expr = d.const(node.attr)
        elif (
            (node.op == "quant" and quant == "round" or node.op == "round")
            and d.round_sigmoid
            and nodes[node.args[0]].op == "sigmoid"
        ):
            # the spike needs no sigmoid (which the compiler then drops where no gradient reads it)
            expr = d.round_sigmoid(f"v{nodes[node.args[0]].args[0]}")
        else:
            expr = _node_expr(d, node.op, [f"v{i}" for i in node.args], node.attr, quant)
        out.append(d.declare(f"v{n}", expr, node.op in BOOLEAN))
    return out


def _term(d: Dialect, e: tuple, seed: Callable[[tuple], str]) -> str:
    kind = e[0]
    if kind == "v":
        return f"v{e[1]}"
    if kind == "g":
        return f"g{e[1]}"
    if kind == "c":
        return d.const(e[1])
    if kind in ("seed_y", "seed_state"):
        return seed(e)
    if kind in _BIN:
        return f"({_term(d, e[1], seed)} {_BIN[kind]} {_term(d, e[2], seed)})"
    if kind == "neg":
        return f"(-{_term(d, e[1], seed)})"
    if kind == "select":
        return d.select(_term(d, e[1], seed), _term(d, e[2], seed), _term(d, e[3], seed))
    if kind == "inside":
        v = _term(d, e[1], seed)
        return f"(({v} >= {d.const(e[2])}) {d.logical['and']} ({v} <= {d.const(e[3])}))"
    if kind == "sign":
        v = _term(d, e[1], seed)
        zero, one = d.const(0.0), d.const(1.0)
        return d.select(f"({v} > {zero})", one, d.select(f"({v} < {zero})", f"(-{one})", zero))
    if kind == "exp":
        return d.call["exp"](_term(d, e[1], seed))
    if kind == "op":  # ("op", name, attr, *operands): a node operation on expressions
        return _node_expr(d, e[1], [_term(d, x, seed) for x in e[3:]], e[2], "round")
    raise ValueError(f"codegen: unknown adjoint term {kind}")  # pragma: no cover


def backward_lines(tr: Traced, adj: Adjoint, d: Dialect, seed: Callable[[tuple], str]) -> tuple[list[str], dict]:
    """Assignments ``g<n> = ...`` (after :func:`forward_lines`), and the adjoint names of the leaves.

    ``seed(("seed_y",))`` spells the incoming gradient of ``y``, ``seed(("seed_state", k))`` that of
    new state ``k``. Returns the lines and ``{"x": str, "state": [str], "param": [str]}``, each the
    adjoint's name or the constant zero where no gradient reaches that leaf.
    """
    lines = []
    for n in adj.order:
        expr = " + ".join(_term(d, t, seed) for t in adj.terms[n])
        lines.append(d.declare(f"g{n}", expr, False))
    done = set(adj.order)
    name = lambda n: f"g{n}" if n in done else d.const(0.0)  # noqa: E731
    leaves = {"x": name(tr.x), "state": [name(n) for n in tr.state], "param": [name(n) for n in tr.params]}
    return lines, leaves
