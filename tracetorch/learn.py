"""Online learning: gradient rules that run forward in time, with memory constant in ``T``.

BPTT keeps every step's graph until the backward pass, so its memory grows with the length of
the sequence. The rules here compute their gradient step by step instead, from quantities that
are carried forward in time, and free each step's graph as soon as that step's loss is
backpropagated (docs/online.md says what each computes and where it equals BPTT):

* :class:`EProp` (Bellec et al. 2020): *eligibility traces*, the forward-mode derivatives of
  each neuron's state with respect to its input weights, its bias and its own params, combined
  with a *learning signal*, the derivative of this step's loss with respect to the neuron's
  output (``feedback="symmetric"``: backpropagated through the layers above at this step;
  ``"random"``: the output error through fixed random matrices).
* :class:`OTTT` (Xiao et al. 2022): *presynaptic traces* (a leaky sum of each layer's input) in
  place of the input in the weight gradient, and the instantaneous gradient of this step.

The traces are derived from the step itself by automatic differentiation, never written per
type: :func:`step_jacobian` pushes one tangent of ones per state field, input and param through
``torch.func.jvp`` (``vmap``-ed), or one cotangent of ones per output back through the step,
which for an elementwise step gives every neuron's diagonal Jacobian block. Any pure elementwise step works: the 52 built-in types, a user's
``TTLayer.step``, a type added to the table later.

Both rules wrap a feed-forward stack (an ``nn.Sequential``) of ``Linear -> TTLayer`` blocks and a
readout, and are called once per timestep; an ordinary ``loss.backward()`` on that step's loss
puts the rule's gradients in ``.grad``, so any optimizer loop works (per step, every ``K``
steps, or once per sequence)::

    rule = tt.learn.EProp(net)            # or tt.learn.OTTT(net)
    for x_t, target_t in stream:          # x_t: [B, features]
        loss = loss_fn(rule(x_t), target_t)
        loss.backward()                   # this step's gradient, added to .grad
        optimizer.step(); optimizer.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .nn.layer import TTLayer

__all__ = ["StepJacobian", "step_jacobian", "EProp", "OTTT", "bptt_reference_grads"]


class StepJacobian(NamedTuple):
    """The per-neuron derivatives of one elementwise step ``(y, s') = step(p, s, x)``.

    With ``K`` state fields, ``P`` param leaves and ``x`` of shape ``[..., N]``, every entry is
    the derivative at each element (the Jacobian of an elementwise step is diagonal across
    neurons, so one tangent of ones per input gives all of it):

    * ``dy_ds``: ``[K, ...]``, ``dy/ds_k``;  ``ds_ds``: ``[K, K, ...]``, ``ds'_a/ds_k`` at ``[a, k]``;
    * ``dy_dx``: ``[...]``;  ``ds_dx``: ``[K, ...]``;
    * ``dy_dp``: ``[P, ...]``;  ``ds_dp``: ``[K, P, ...]`` (a param ``[]`` or ``[N]`` differentiated
      per element, before any sum over the neurons or the batch).
    """

    dy_ds: torch.Tensor
    ds_ds: torch.Tensor
    dy_dx: torch.Tensor
    ds_dx: torch.Tensor
    dy_dp: torch.Tensor
    ds_dp: torch.Tensor


def step_jacobian(
    step: Callable[..., tuple[torch.Tensor, Any]],
    params: Any,
    state: Any,
    x: torch.Tensor,
    *,
    mode: str = "reverse",
    check: bool = False,
    **step_kwargs: Any,
) -> tuple[torch.Tensor, Any, StepJacobian]:
    """One step and its per-neuron Jacobian: ``(y, new_state, StepJacobian)``, by AD of the step.

    ``step(params, state, x, **step_kwargs) -> (y, new_state)`` must be pure and elementwise
    across neurons (every built-in type is; a step that mixes neurons, a matmul inside it, is not
    what this computes). The step runs once, so a random quantizer draws once and the Jacobian is
    that of the very sample returned. Pure: nothing is mutated.

    ``mode``: ``"forward"``: ``torch.func.jvp`` with one tangent of ones per input leaf (every
    state field, ``x``, every param), ``vmap``-ed with ``randomness="same"``; every custom
    ``autograd.Function`` in the step needs a ``jvp`` rule, which the built-in quantizers do not
    have (one would stop ``torch.compile``), so it serves the LI family and steps without them.
    ``"reverse"`` (default; measured 3-4x faster on the CPU, benchmarks/online.py): one forward
    with the params expanded to ``x``'s shape, then one backward of ones per output leaf (``y`` and
    every state field). Both give the same numbers (tested).

    Args:
        step: the pure step.
        params: its params pytree (tensors ``[]`` or broadcasting to ``x``).
        state: its state pytree (``K`` tensors shaped like ``x``).
        x: one step's input ``[..., N]``.
        check: also verify that the step is elementwise (one more backward with a random
            cotangent per output, compared with the diagonal; ``mode="reverse"`` only); a step that
            mixes neurons raises ``ValueError`` instead of returning a Jacobian that is not its own.
            The online rules check each layer's step once, on its first step.
    """
    if mode not in ("forward", "reverse"):
        raise ValueError(f"step_jacobian: mode must be 'forward' or 'reverse', received {mode!r}")
    p_leaves, p_spec = tree_flatten(params)
    s_leaves, s_spec = tree_flatten(state)
    k = len(s_leaves)
    shape = x.shape

    def f(*flat):
        s = tree_unflatten(list(flat[:k]), s_spec)
        p = tree_unflatten(list(flat[k + 1 :]), p_spec)
        y, new = step(p, s, flat[k], **step_kwargs)
        new_leaves = tree_flatten(new)[0]
        if len(new_leaves) != k:
            raise ValueError(
                f"step_jacobian: the step returned {len(new_leaves)} state leaves, expected {k} like its input"
            )
        return (y, *new_leaves)

    if mode == "forward":
        primals = (*s_leaves, x, *p_leaves)
        d = len(primals)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        tangents = tuple(eye[:, j].reshape(d, *([1] * t.dim())).expand(d, *t.shape) for j, t in enumerate(primals))

        def directional(*tans):
            return torch.func.jvp(f, primals, tans)

        try:
            outs, touts = torch.func.vmap(directional, randomness="same")(*tangents)
        except NotImplementedError as err:
            raise NotImplementedError(
                f"step_jacobian: mode='forward' cannot differentiate this step ({err}); the built-in "
                "quantizers have no jvp rule: use mode='reverse' (the default)"
            ) from err
        y, new_leaves = outs[0][0], [o[0] for o in outs[1:]]
        # rows: outputs (y, s'_1..K); columns: inputs (s_1..K, x, p_1..P); each [...]
        rows = [t.expand(d, *shape) for t in touts]
    else:
        with torch.enable_grad():
            inputs = [t.detach().expand(shape).requires_grad_() for t in (*s_leaves, x, *p_leaves)]
            outs = f(*inputs)
            y, new_leaves = outs[0].detach(), [o.detach() for o in outs[1:]]
            rows = []
            ones = torch.ones(shape, dtype=x.dtype, device=x.device)
            for j, o in enumerate(outs):
                if not o.requires_grad:
                    rows.append(x.new_zeros(len(inputs), *shape))
                    continue
                gs = torch.autograd.grad(o, inputs, ones, retain_graph=check or j < len(outs) - 1, allow_unused=True)
                rows.append(torch.stack([torch.zeros_like(ones) if g is None else g for g in gs]))
                if check:
                    _check_diagonal(step, o, inputs, rows[-1], retain=j < len(outs) - 1)
    dy, ds = rows[0], (torch.stack(rows[1:]) if k else x.new_zeros(0, len(rows[0]), *shape))
    jac = StepJacobian(
        dy_ds=dy[:k],
        ds_ds=ds[:, :k],
        dy_dx=dy[k],
        ds_dx=ds[:, k],
        dy_dp=dy[k + 1 :],
        ds_dp=ds[:, k + 1 :],
    )
    return y, tree_unflatten(new_leaves, s_spec), jac


def _check_diagonal(
    step: Callable[..., Any], out: torch.Tensor, inputs: list[torch.Tensor], diag: torch.Tensor, retain: bool
) -> None:
    """Raise if ``out``'s Jacobian is not diagonal across elements: for an elementwise step,
    ``J^T v`` equals ``diag * v`` for every cotangent ``v``; a random ``v`` tells them apart."""
    # a private generator: the check must not move the user's random stream
    gen = torch.Generator(device=out.device).manual_seed(0)
    v = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=gen)
    gs = torch.autograd.grad(out, inputs, v, retain_graph=retain, allow_unused=True)
    for g, d in zip(gs, diag):
        if g is None:
            continue
        expected = d * v
        scale = expected.abs().max().clamp_min(1.0)
        if not bool(((g - expected).abs().max() <= 1e-4 * scale).item()):
            name = getattr(step, "__qualname__", type(step).__name__)
            raise ValueError(
                f"step_jacobian: the step {name} is not elementwise across neurons (an output depends on "
                "another neuron's input or state: a matmul, a reduction or indexing inside the step); the "
                "online rules' eligibility traces hold only per-neuron derivatives and would be wrong for it"
            )


# ---- the feed-forward stack both rules wrap ------------------------------------------------------


class _Block:
    """One ``[Linear] -> TTLayer`` block of the stack, with the rule's per-block memory."""

    def __init__(self, linear: nn.Linear | None, layer: TTLayer, path: str) -> None:
        self.linear, self.layer, self.path = linear, layer, path
        self.traces: Any = None
        self.version: int | None = None
        self.checked = False  # whether the layer's step was checked to be elementwise

    def states_changed(self) -> bool:
        """Whether the layer's states were changed from outside since the rule last wrote them."""
        return self.layer.__dict__.get("_tt_version", 0) != self.version

    def put(self, new_state: Any) -> None:
        self.layer._put_states(dict(zip(self.layer.state_names, new_state)))
        self.version = self.layer.__dict__.get("_tt_version", 0)


def _stack(rule: str, model: nn.Module) -> tuple[list[nn.Module], list[str]]:
    if isinstance(model, nn.Sequential):
        seq = model
    else:
        kids = list(model.children())
        if len(kids) != 1 or not isinstance(kids[0], nn.Sequential):
            raise TypeError(
                f"{rule}: model must be an nn.Sequential (or a module holding exactly one nn.Sequential), "
                f"received {type(model).__name__} with children {[type(c).__name__ for c in kids]}"
            )
        seq = kids[0]
    names = [n for n, _ in seq.named_children()]
    return list(seq), names


def _parse(rule: str, model: nn.Module) -> tuple[list[tuple[str, Any]], int]:
    """The stack as ``[("block", _Block) | ("module", m)]`` and the index after which only a readout follows."""
    mods, names = _stack(rule, model)
    plan: list[tuple[str, Any]] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Linear) and i + 1 < len(mods) and isinstance(mods[i + 1], TTLayer):
            plan.append(("block", _Block(m, mods[i + 1], names[i + 1])))
            i += 2
            continue
        if isinstance(m, TTLayer):
            plan.append(("block", _Block(None, m, names[i])))
        else:
            plan.append(("module", m))
        i += 1
    last_block = max((j for j, (kind, _) in enumerate(plan) if kind == "block"), default=-1)
    if last_block < 0:
        raise ValueError(f"{rule}: the model holds no TTLayer; nothing to learn online")
    for j, (kind, m) in enumerate(plan[:last_block]):
        if kind == "module" and any(True for _ in m.parameters()):
            raise ValueError(
                f"{rule}: {type(m).__name__} (position {j}) has parameters but is not an nn.Linear feeding a "
                "TTLayer; below the last neuron layer only Linear -> TTLayer blocks and parameter-free modules "
                "are supported"
            )
    for kind, m in plan:
        if kind == "block":
            if m.layer.dim != -1:
                raise ValueError(f"{rule}: layer {m.path} has dim={m.layer.dim}; online rules need dim=-1 ([B, N])")
    return plan, last_block


def _flat2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    return x.reshape(-1, x.shape[-1]), x.shape[:-1]


class _OnlineRule(nn.Module):
    """Shared plumbing: the stack, the per-step call, the state bookkeeping."""

    _rule = "online rule"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._plan, self._last_block = _parse(self._rule, model)

    @property
    def blocks(self) -> list[_Block]:
        return [b for kind, b in self._plan if kind == "block"]

    def reset(self) -> None:
        """Zero every hidden state of the stack and every trace of the rule (a new sequence)."""
        for b in self.blocks:
            b.layer.zero_states()
            b.traces = None

    def run(
        self, xs: torch.Tensor, loss_fn: Callable[[torch.Tensor, int], torch.Tensor], reset: bool = True
    ) -> tuple[torch.Tensor, float]:
        """A whole ``[T, ...]`` sequence, one step at a time: ``loss_fn(out_t, t)`` is backpropagated
        at each step (gradients summed into ``.grad``). Returns the outputs ``[T, ...]`` (detached)
        and the summed loss. Memory stays that of one step. ``reset`` (default) starts from zero
        states and traces (:meth:`reset`); ``False`` continues the stream where it stands."""
        if reset:
            self.reset()
        outs, total = [], 0.0
        for t, x in enumerate(xs.unbind(0)):
            out = self(x)
            loss = loss_fn(out, t)
            loss.backward()
            outs.append(out.detach())
            total += float(loss.detach())
        return torch.stack(outs), total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One timestep of the whole stack: ``x`` ``[..., features]`` -> the model's output."""
        h = x
        hidden: list[tuple[_Block, torch.Tensor, bool]] = []
        only_free_after = not any(any(True for _ in m.parameters()) for _, m in self._plan[self._last_block + 1 :])
        for j, (kind, m) in enumerate(self._plan):
            if kind == "module":
                h = m(h)
                continue
            is_output = j == self._last_block and only_free_after
            h = self._block(m, h)
            hidden.append((m, h, is_output))
            if self._detach_between and not is_output:
                h = h.detach()
        return self._finish(h, hidden)

    _detach_between = False

    def _finish(self, out: torch.Tensor, hidden: list[tuple[_Block, torch.Tensor, bool]]) -> torch.Tensor:
        return out

    def _sync(self, b: _Block) -> None:
        """Forget the block's traces if its layer's states were changed from outside (zero_states, ...)."""
        if b.states_changed():
            b.traces = None

    def _block(self, b: _Block, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# ---- e-prop -------------------------------------------------------------------------------


class _EPropOut(torch.autograd.Function):
    """Forward: the step's output. Backward: the learning signal ``g`` (this step's ``dloss/dy``)
    times the eligibilities, for the weight, bias and params; ``g * dy/dx`` for the input."""

    @staticmethod
    def forward(ctx, y, elig, i, weight, bias, *params):
        # saved with save_for_backward (not as ctx attributes), so saved-tensor hooks see them
        ctx.save_for_backward(elig["dy_dx"], elig["W"], elig["b"], *elig["p"])
        ctx.shapes = [p.shape for p in params]
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        dy_dx, e_w, e_b, *e_p = ctx.saved_tensors
        g_i = g * dy_dx
        g_w = torch.einsum("bn,bnm->nm", g, e_w) if e_w is not None else None
        g_b = (g * e_b).sum(0) if e_b is not None else None
        g_p = [(g * ep).sum_to_size(shape) for ep, shape in zip(e_p, ctx.shapes)]
        return (None, None, g_i, g_w, g_b, *g_p)


class _Broadcast(torch.autograd.Function):
    """Identity on the output; backward also sends ``g_out @ B_l`` to each hidden layer's output."""

    @staticmethod
    def forward(ctx, out, feedback, *hidden):
        ctx.feedback = feedback
        ctx.shapes = [h.shape for h in hidden]
        return out.clone()

    @staticmethod
    def backward(ctx, g):
        g2 = g.reshape(-1, g.shape[-1])
        return (g, None, *[(g2 @ fb.to(g.dtype)).reshape(s) for fb, s in zip(ctx.feedback, ctx.shapes)])


class EProp(_OnlineRule):
    """e-prop (Bellec et al. 2020) over a feed-forward stack, one timestep per call.

    For every ``Linear -> TTLayer`` block it carries the eligibility traces ``ds/dW``
    ``[K, B, N, M]``, ``ds/db`` ``[K, B, N]`` and ``ds/dp`` for every param of the layer, updated at
    each step from :func:`step_jacobian` (``ε_t = ds_t/ds_{t-1} ε_{t-1} + ds_t/dx_t ∂x_t/dθ``),
    and its output's eligibility ``dy_t/dθ``. ``loss.backward()`` on the step's loss multiplies the
    learning signal ``L_t = dloss_t/dy_t`` by it: ``W.grad += Σ_b L_t ⊙ dy_t/dW``. Memory: the
    traces, constant in ``T`` (``K·B·N·M`` per block, with ``M`` the block's input size).

    Args:
        model: an ``nn.Sequential`` (or a module holding one) of ``nn.Linear -> TTLayer`` blocks
            (a TTLayer may also come first, without a Linear), parameter-free modules, and a
            readout after the last TTLayer (any modules; trained by the ordinary gradient of each
            step). Every TTLayer with ``dim=-1`` and an elementwise step.
        feedback: ``"symmetric"`` (default): ``L_t`` backpropagated through the blocks above at
            this step (the transposed weights, the surrogate derivative); ``"random"``: every
            hidden block gets the output error through a fixed random matrix ``[n_out, N]``
            (scaled ``1/sqrt(n_out)``, drawn from ``generator``); the block that produces the
            output still gets its exact signal.
        generator: for the random feedback matrices (default: torch's global generator).
        jacobian: how :func:`step_jacobian` differentiates the step, ``"reverse"`` (default) or
            ``"forward"`` (``torch.func.jvp``: the LI family and steps whose custom functions have
            a ``jvp`` rule); the same traces either way.

    Equals BPTT (docs/online.md) for the weights, bias and params of one block whose output
    feeds a memoryless readout with a per-step loss, for every built-in type.
    """

    _rule = "EProp"

    def __init__(
        self,
        model: nn.Module,
        feedback: str = "symmetric",
        generator: torch.Generator | None = None,
        jacobian: str = "reverse",
    ) -> None:
        super().__init__(model)
        if feedback not in ("symmetric", "random"):
            raise ValueError(f"EProp: feedback must be 'symmetric' or 'random', received {feedback!r}")
        if jacobian not in ("forward", "reverse"):
            raise ValueError(f"EProp: jacobian must be 'forward' or 'reverse', received {jacobian!r}")
        self.feedback = feedback
        self.jacobian = jacobian
        self._generator = generator
        self._matrices: dict[int, torch.Tensor] = {}

    @property
    def _detach_between(self) -> bool:  # type: ignore[override]
        return self.feedback == "random"

    def _block(self, b: _Block, h: torch.Tensor) -> torch.Tensor:
        h2, lead = _flat2(h)
        lin, layer = b.linear, b.layer
        self._sync(b)
        if lin is None:
            x_in = h2
        else:  # the input current, in the graph for the input's gradient only (the weights' comes from the traces)
            bias = None if lin.bias is None else lin.bias.detach()
            x_in = nn.functional.linear(h2, lin.weight.detach(), bias)
        i_val = layer._prepare_input(x_in.detach())
        params = layer.activated_params()
        p_leaves, p_spec = tree_flatten(params)
        with torch.no_grad():
            p_det = tree_unflatten([p.detach() for p in p_leaves], p_spec)
            check = self.jacobian == "reverse" and not b.checked
            y, new_state, jac = step_jacobian(layer.step, p_det, layer.state, i_val, mode=self.jacobian, check=check)
            b.checked = b.checked or check
            pre = None if lin is None else h2.detach().to(i_val.dtype)
            elig = self._eligibility(b, jac, pre, len(p_leaves))
        b.put(new_state)
        w = None if lin is None else lin.weight
        bias = None if lin is None else lin.bias
        out = _EPropOut.apply(y, elig, x_in.to(i_val.dtype), w, bias, *p_leaves)
        return out.reshape(*lead, out.shape[-1])

    @staticmethod
    def _eligibility(b: _Block, jac: StepJacobian, x: torch.Tensor | None, n_p: int) -> dict[str, Any]:
        """Output eligibilities of this step (from the traces of the last), then the traces advanced."""
        k = jac.ds_ds.shape[0]
        tr = b.traces
        if tr is None:
            z = jac.dy_dx.new_zeros
            bn = jac.dy_dx.shape
            tr = {
                "W": z(k, *bn, x.shape[-1]) if x is not None else None,
                "b": z(k, *bn) if x is not None and b.linear.bias is not None else None,
                "p": z(k, n_p, *bn),
            }

        def advance(old, drive_s, drive_y):
            # old [K, ...]: new trace = Σ_k ds'/ds_k old_k + drive_s ; output elig = Σ_k dy/ds_k old_k + drive_y
            a_s, a_y = jac.ds_ds, jac.dy_ds
            extra = old.dim() - 1 - jac.dy_dx.dim()
            for _ in range(extra):
                a_s, a_y = a_s.unsqueeze(-1), a_y.unsqueeze(-1)
            return (a_s * old.unsqueeze(0)).sum(1) + drive_s, (a_y * old).sum(0) + drive_y

        out: dict[str, Any] = {"dy_dx": jac.dy_dx, "W": None, "b": None}
        new: dict[str, Any] = {"W": None, "b": None}
        if x is not None:
            xs = x.unsqueeze(-2)  # [B, 1, M]
            new["W"], out["W"] = advance(tr["W"], jac.ds_dx.unsqueeze(-1) * xs, jac.dy_dx.unsqueeze(-1) * xs)
            if tr["b"] is not None:
                new["b"], out["b"] = advance(tr["b"], jac.ds_dx, jac.dy_dx)
        # params: traces [K, P, ...], one column per param leaf
        ps, py = [], []
        for j in range(n_p):
            s_, y_ = advance(tr["p"][:, j], jac.ds_dp[:, j], jac.dy_dp[j])
            ps.append(s_)
            py.append(y_)
        new["p"] = torch.stack(ps, 1) if n_p else tr["p"]
        out["p"] = py
        b.traces = new
        return out

    def _finish(self, out: torch.Tensor, hidden: list[tuple[_Block, torch.Tensor, bool]]) -> torch.Tensor:
        if self.feedback != "random":
            return out
        targets = [(b, h) for b, h, is_output in hidden if not is_output]
        if not targets:
            return out
        n_out = out.shape[-1]
        mats = []
        for b, h in targets:
            key = id(b)
            m = self._matrices.get(key)
            if m is None or m.shape != (n_out, h.shape[-1]):
                m = torch.randn(n_out, h.shape[-1], generator=self._generator, dtype=out.dtype) / n_out**0.5
                self._matrices[key] = m
            mats.append(m.to(device=out.device))
        return _Broadcast.apply(out, mats, *[h for _, h in targets])

    def feedback_matrix(self, index: int) -> torch.Tensor | None:
        """The random feedback matrix ``[n_out, N]`` of the ``index``-th block, once drawn (``None`` before)."""
        return self._matrices.get(id(self.blocks[index]))


# ---- OTTT ---------------------------------------------------------------------------------


class _TraceLinear(torch.autograd.Function):
    """``x @ W.T + b`` forward; backward: the input's gradient through ``W``, the weight's from the
    presynaptic trace ``a`` in place of ``x`` (OTTT)."""

    @staticmethod
    def forward(ctx, x, a, c, weight, bias):
        ctx.save_for_backward(a, weight)
        ctx.c, ctx.has_bias = c, bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        a, weight = ctx.saved_tensors
        g_x = g @ weight.to(g.dtype) if ctx.needs_input_grad[0] else None
        g_w = (g.transpose(0, 1) @ a.to(g.dtype)).to(weight.dtype)
        g_b = g.sum(0) * ctx.c if ctx.has_bias else None  # the bias's input is 1: its trace is Σ λ^k
        return g_x, None, None, g_w, g_b


class OTTT(_OnlineRule):
    """OTTT (Xiao et al. 2022) over a feed-forward stack, one timestep per call.

    Every ``Linear -> TTLayer`` block keeps a presynaptic trace ``a_t = λ a_{t-1} + x_t``
    ``[B, M]`` of its input (and ``c_t = λ c_{t-1} + 1`` for the bias, whose input is 1); at each step the layer runs from its detached state, and
    ``loss.backward()`` gives the instantaneous gradient of that step's loss, with ``a_t`` in
    place of ``x_t`` in the weight's gradient: ``W.grad += δ_t^T a_t``, ``δ_t = dloss_t/di_t``
    (through the layers above at this step only). The layer's own params get their instantaneous
    gradient. Memory: one ``[B, M]`` trace per block, constant in ``T``.

    Args:
        model: as for :class:`EProp`.
        decay: ``λ``, the trace's decay: a float, or ``None`` (default) for each layer's membrane
            decay (``beta``; a dual layer's mean of ``pos_beta`` and ``neg_beta``), averaged over
            neurons when it is one per neuron, read at each step.

    Equals BPTT with the reset detached for the weights of one LIB-like block (membrane
    ``mem = λ mem + W x``, one shared ``λ``) feeding a memoryless readout; docs/online.md.
    """

    _rule = "OTTT"

    def __init__(self, model: nn.Module, decay: float | None = None) -> None:
        super().__init__(model)
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1):
            raise ValueError(f"OTTT: decay must be None or a float in [0, 1], received {decay!r}")
        self.decay = decay
        for b in self.blocks:
            if b.linear is not None and decay is None and not _has_beta(b.layer):
                raise ValueError(
                    f"OTTT: layer {b.path} ({type(b.layer).__name__}) has no beta to take the trace's decay from; "
                    "pass decay="
                )

    def _lam(self, layer: TTLayer) -> float:
        if self.decay is not None:
            return float(self.decay)
        with torch.no_grad():
            names = layer.param_names
            if "beta" in names:
                return float(layer.beta.mean())
            return float(0.5 * (layer.pos_beta.mean() + layer.neg_beta.mean()))

    def _block(self, b: _Block, h: torch.Tensor) -> torch.Tensor:
        h2, lead = _flat2(h)
        lin, layer = b.linear, b.layer
        self._sync(b)
        if lin is None:
            i = h2
        else:
            x_det = h2.detach().to(lin.weight.dtype)
            if b.traces is None:
                a, c = x_det, 1.0
            else:
                lam = self._lam(layer)
                a, c = lam * b.traces[0] + x_det, lam * b.traces[1] + 1.0
            b.traces = (a, c)
            i = _TraceLinear.apply(h2, a, c, lin.weight, lin.bias)
        i = layer._prepare_input(i)
        state = layer.state
        state = type(state)(*(s.detach() for s in state))
        y, new_state = layer.step(layer.activated_params(), state, i)
        b.put(type(new_state)(*(s.detach() for s in new_state)))
        return y.reshape(*lead, y.shape[-1])


def _has_beta(layer: TTLayer) -> bool:
    names = layer.param_names
    return "beta" in names or ("pos_beta" in names and "neg_beta" in names)


# ---- a reference -----------------------------------------------------------------------------


def bptt_reference_grads(
    model: nn.Module, xs: torch.Tensor, loss_fn: Callable[[torch.Tensor, int], torch.Tensor], params: Sequence[nn.Parameter]
) -> list[torch.Tensor]:
    """BPTT's gradient of ``Σ_t loss_fn(model(x_t), t)`` with respect to ``params``, from zero states.

    The object API called per step, the whole graph kept: what the online rules are compared with
    (tests, benchmarks). The model's states are zeroed before and after.
    """
    zero = getattr(model, "zero_states", None)
    layers = [m for m in model.modules() if isinstance(m, TTLayer)]
    for m in layers:
        m.zero_states()
    total = sum(loss_fn(model(x), t) for t, x in enumerate(xs.unbind(0)))
    grads = torch.autograd.grad(total, list(params), allow_unused=True)
    for m in layers:
        m.zero_states()
    del zero
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
