"""tt.learn: the online rules (e-prop, OTTT) against BPTT, the traces against a hand derivation,
memory flat in T by counting saved tensors."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

import tracetorch as tt
from tracetorch.functional import round_st, sigmoid4x
from tracetorch.learn import OTTT, EProp, bptt_reference_grads, step_jacobian

F = tt.functional
D = torch.float64


def _net(name: str, n_in: int = 3, n: int = 5, n_out: int = 2, seed: int = 0, **kw) -> nn.Sequential:
    torch.manual_seed(seed)
    cls = getattr(tt.nn, name)
    layer = cls(n, quant_fn="round", **kw) if F.SPECS[name].fires else cls(n)
    with torch.no_grad():  # non-default values, so every param's gradient means something
        for pname, p in layer.named_parameters():
            if "rec_weight" in pname:
                p.uniform_(0.3, 0.9)
            elif "scale" in pname:
                p.uniform_(0.5, 1.5)
            else:
                p.add_(0.3 * torch.randn_like(p))
    return nn.Sequential(nn.Linear(n_in, n), layer, nn.Linear(n, n_out)).to(D)


def _task(T: int = 9, B: int = 4, n_in: int = 3, n_out: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    xs = 2.0 * torch.randn(T, B, n_in, generator=g, dtype=D)
    target = torch.randn(T, B, n_out, generator=g, dtype=D)
    return xs, lambda out, t: ((out - target[t]) ** 2).sum()


def _online_grads(rule, net, xs, loss_fn):
    for p in net.parameters():
        p.grad = None
    rule.run(xs, loss_fn)
    return [p.grad.clone() for p in net.parameters()]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


# ---- exactness -----------------------------------------------------------------------------------

EXACT_TYPES = [
    "LIB", "LIT", "LITS", "DLIB", "SLIB", "RLIB", "DSRLITS", "SRLIT", "LI", "DSLI", "ALIB", "DSRALITS",
    "LIB/zero", "DRALIT/zero",
]  # fmt: skip


@pytest.mark.parametrize("case", EXACT_TYPES)
def test_eprop_equals_bptt_one_block(case):
    # one Linear -> neuron block feeding a memoryless readout, a per-step loss: e-prop's eligibility
    # traces are exact per-neuron derivatives (the step is elementwise, its R and A parts per
    # neuron), and the learning signal is the whole derivative of the loss wrt the block's output
    name, _, reset = case.partition("/")
    net = _net(name, **({"reset": reset} if reset else {}))
    xs, loss_fn = _task()
    params = list(net.parameters())
    ref = bptt_reference_grads(net, xs, loss_fn, params)
    got = _online_grads(EProp(net), net, xs, loss_fn)
    for (pname, _), g, r in zip(net.named_parameters(), got, ref):
        assert r.abs().max() > 0, pname
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=f"{name}: {pname}")


class SmoothALIF(tt.TTLayer):
    """A user's adaptive neuron with a smooth output (no quantizer): forward mode runs through it."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.register_decay("beta", 0.85)
        self.register_decay("rho", 0.9)
        self.register_threshold("threshold", 0.8)
        self.register_state("mem", "adapt")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        s = sigmoid4x(mem - params.threshold - state.adapt)
        adapt = params.rho * state.adapt + (1 - params.rho) * s
        return s, state._replace(mem=mem - s * params.threshold, adapt=adapt)


@pytest.mark.parametrize("name", ["DSLI", "user"])
def test_eprop_forward_mode_equals_reverse_mode_and_bptt(name):
    if name == "user":
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 5), SmoothALIF(5), nn.Linear(5, 2)).to(D)
    else:
        net = _net(name)
    xs, loss_fn = _task(T=5)
    a = _online_grads(EProp(net, jacobian="forward"), net, xs, loss_fn)
    b = _online_grads(EProp(net, jacobian="reverse"), net, xs, loss_fn)
    ref = bptt_reference_grads(net, xs, loss_fn, list(net.parameters()))
    for u, v, r in zip(a, b, ref):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(v, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["LIB", "DSRLITS", "SLI"])
def test_step_jacobian_matches_autograd(name):
    modes = ("forward", "reverse") if not F.SPECS[name].fires else ("reverse",)
    # every entry of the per-neuron Jacobian against torch.autograd on one element at a time
    spec = F.SPECS[name]
    step = F.get_step(name)
    x = torch.randn(2, 3, dtype=D)
    params = F.init_params(name, 3, dtype=D)
    params = spec.Params(*(p + 0.05 * torch.rand_like(p) for p in params))
    state = spec.State(*(torch.randn_like(x) for _ in spec.state_names))
    kw = {"quant_fn": "round"}
    for mode in modes:
        y, new, jac = step_jacobian(step, params, state, x, mode=mode, **kw)
        y_ref, new_ref = step(params, state, x, **kw)
        torch.testing.assert_close(y, y_ref)
        for a, b in zip(new, new_ref):
            torch.testing.assert_close(a, b)
        for a in range(len(state)):
            for k in range(len(state)):

                def out_a(s_k, a=a, k=k):
                    return step(params, state._replace(**{spec.state_names[k]: s_k}), x, **kw)[1][a]

                full = torch.autograd.functional.jacobian(out_a, state[k])
                diag = full.reshape(x.numel(), x.numel()).diagonal().reshape(x.shape)
                torch.testing.assert_close(jac.ds_ds[a, k], diag, msg=f"{name} {mode} ds{a}/ds{k}")
        full = torch.autograd.functional.jacobian(lambda xx: step(params, state, xx, **kw)[0], x)
        torch.testing.assert_close(jac.dy_dx, full.reshape(x.numel(), x.numel()).diagonal().reshape(x.shape))


def test_lib_traces_equal_hand_derivation():
    # LIB, straight-through spikes, reset included. With m⁻_t = beta m_{t-1} + i_t,
    # psi_t = sigmoid4x'(m⁻_t - theta), m_t = m⁻_t - theta s_t:
    #   dm_t/dW_nm     = (1 - theta psi_t) (beta dm_{t-1}/dW_nm + x_t,m)
    #   dm_t/dbeta     = (1 - theta psi_t) (m_{t-1} + beta dm_{t-1}/dbeta)
    #   dm_t/dtheta    = (1 - theta psi_t) beta dm_{t-1}/dtheta - s_t + theta psi_t
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), tt.nn.LIB(4, beta=0.8, quant_fn="round"), nn.Linear(4, 1)).to(D)
    xs = 2.0 * torch.randn(6, 2, 3, dtype=D)
    rule = EProp(net)
    W, b = net[0].weight.detach(), net[0].bias.detach()
    beta, theta = net[1].beta.detach(), net[1].threshold.detach()
    m = torch.zeros(2, 4, dtype=D)
    e_w = torch.zeros(2, 4, 3, dtype=D)
    e_beta = torch.zeros(2, 4, dtype=D)
    e_theta = torch.zeros(2, 4, dtype=D)
    for x in xs:
        rule(x)
        i = x @ W.T + b
        pre = beta * m + i
        p = torch.sigmoid(4 * (pre - theta))
        psi = 4 * p * (1 - p)
        s = torch.round(p)
        keep = 1 - theta * psi
        e_w = keep.unsqueeze(-1) * (beta.unsqueeze(-1) * e_w + x.unsqueeze(1))
        e_beta = keep * (m + beta * e_beta)
        e_theta = keep * beta * e_theta - s + theta * psi
        m = pre - theta * s
    traces = rule.blocks[0].traces
    torch.testing.assert_close(net[1].mem, m)
    torch.testing.assert_close(traces["W"][0], e_w)
    names = net[1].param_names
    torch.testing.assert_close(traces["p"][0, names.index("beta")], e_beta)
    torch.testing.assert_close(traces["p"][0, names.index("threshold")], e_theta)
    assert e_w.abs().max() > 0 and e_theta.abs().max() > 0


class DetachedLIF(tt.TTLayer):
    """A user's LIF whose reset is excluded from the gradient (the spike detached in the reset)."""

    def __init__(self, n: int, beta: float = 0.8) -> None:
        super().__init__(n)
        self.register_decay("beta", beta, rank=0, learnable=False)
        self.register_threshold("threshold", 1.0)
        self.register_state("mem")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        s = round_st(sigmoid4x(mem - params.threshold))
        return s, state._replace(mem=mem - s.detach() * params.threshold)


def test_ottt_equals_bptt_detached_reset_and_eprop_on_a_user_step():
    # OTTT: with the reset detached and one shared decay, dm_t/dW = sum_tau beta^(t-tau) x_tau is
    # the presynaptic trace, so OTTT's weight and bias gradients are BPTT's; the threshold's is
    # only instantaneous (its path through the reset is dropped). e-prop is exact for everything.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), DetachedLIF(5), nn.Linear(5, 2)).to(D)
    xs, loss_fn = _task()
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    ref = bptt_reference_grads(net, xs, loss_fn, params)
    ottt = _online_grads(OTTT(net), net, xs, loss_fn)
    eprop = _online_grads(EProp(net), net, xs, loss_fn)
    for pname, o, e, r in zip(names, ottt, eprop, ref):
        assert r.abs().max() > 0, pname
        torch.testing.assert_close(e, r, rtol=1e-9, atol=1e-11, msg=f"e-prop {pname}")
        if pname != "1.raw_threshold":
            torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-11, msg=f"OTTT {pname}")
    assert not torch.allclose(ottt[names.index("1.raw_threshold")], ref[names.index("1.raw_threshold")])


def test_cosine_to_bptt_where_the_rules_differ(record_property):
    # two hidden LIB blocks and a leaky (LI) readout: the hidden learning signals ignore the
    # readout's memory and the upper block's memory, so the rules approximate BPTT. The readout
    # block itself gets its exact gradient from every rule (its signal is dloss/dy, its traces exact).
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(3, 6), tt.nn.LIB(6, quant_fn="round"), nn.Linear(6, 5), tt.nn.LIB(5, quant_fn="round"),
        nn.Linear(5, 2), tt.nn.LI(2),
    ).to(D)
    xs, loss_fn = _task(T=12)
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    ref = bptt_reference_grads(net, xs, loss_fn, params)
    rules = {
        "eprop_symmetric": EProp(net),
        "eprop_random": EProp(net, feedback="random", generator=torch.Generator().manual_seed(0)),
        "ottt": OTTT(net),
    }
    for key, rule in rules.items():
        got = _online_grads(rule, net, xs, loss_fn)
        cos = {n: _cos(g, r) for n, g, r in zip(names, got, ref)}
        record_property(f"cosine_{key}", {n: round(c, 4) for n, c in cos.items()})
        assert all(-1.0 - 1e-9 <= c <= 1.0 + 1e-9 for c in cos.values())
        if key != "ottt":  # e-prop's readout block is exact
            for n in ("4.weight", "4.bias", "5.raw_beta"):
                assert cos[n] > 1 - 1e-9, (key, n, cos[n])
        if key != "eprop_random":
            assert cos["0.weight"] > 0.5 and cos["2.weight"] > 0.5, (key, cos)


def test_object_api_streaming_with_an_optimizer():
    # one sample at a time ([1, features]), an optimizer step after every step: the loss falls
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), tt.nn.LIB(16, quant_fn="round"), nn.Linear(16, 1))
    rule = EProp(net)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    stream = torch.rand(400, 1, 2)
    target = stream.sum(-1, keepdim=True)  # a memoryless target: the summed input
    losses = []
    for x, y in zip(stream, target):
        loss = ((rule(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert sum(losses[-50:]) < 0.5 * sum(losses[:50])
    assert net[1].mem.shape == (1, 16) and not net[1].mem.requires_grad


def test_zero_states_restarts_the_traces():
    net = _net("LIB")
    xs, loss_fn = _task(T=6)
    rule = EProp(net)
    rule.run(xs[:3], loss_fn)
    net[1].zero_states()  # outside the rule: the traces must restart with the states
    for p in net.parameters():
        p.grad = None
    for t, x in enumerate(xs[3:]):
        loss_fn(rule(x), t + 3).backward()
    got = [p.grad for p in net.parameters()]
    ref = bptt_reference_grads(net, xs[3:], lambda o, t: loss_fn(o, t + 3), list(net.parameters()))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_bad_models_and_arguments():
    with pytest.raises(ValueError, match="no TTLayer"):
        EProp(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="nn.Sequential"):
        EProp(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="feedback"):
        EProp(nn.Sequential(nn.Linear(2, 2), tt.nn.LIB(2)), feedback="mirror")
    with pytest.raises(ValueError, match="Conv1d"):
        OTTT(nn.Sequential(nn.Conv1d(1, 1, 1), nn.Flatten(), nn.Linear(2, 2), tt.nn.LIB(2)))
    with pytest.raises(ValueError, match="dim=-2"):
        EProp(nn.Sequential(tt.nn.LIB(2, dim=-2)))
    with pytest.raises(ValueError, match="decay"):
        OTTT(nn.Sequential(nn.Linear(2, 2), tt.nn.LIB(2)), decay=1.5)
    x = torch.zeros(1, 2)
    with pytest.raises(NotImplementedError, match="mode='reverse'"):
        step_jacobian(F.lib_step, F.init_params("LIB", 2), F.init_state("LIB", x), x, mode="forward")
    with pytest.raises(ValueError, match="mode"):
        step_jacobian(F.lib_step, F.init_params("LIB", 2), F.init_state("LIB", torch.zeros(1, 2)), torch.zeros(1, 2), mode="x")


class MixingLI(tt.TTLayer):
    """A user's leaky integrator that (wrongly for e-prop) reads the mean membrane of all neurons."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.register_decay("beta", 0.85)
        self.register_state("mem")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x + 0.5 * state.mem.mean(-1, keepdim=True)
        return mem, state._replace(mem=mem)


def test_eprop_refuses_a_step_that_mixes_neurons():
    """Its eligibility traces would hold only the diagonal: refused on the first step, not silently wrong."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), MixingLI(5), nn.Linear(5, 2)).to(D)
    xs, loss_fn = _task(T=3)
    with pytest.raises(ValueError, match="not elementwise across neurons"):
        EProp(net).run(xs, loss_fn)

    def mixing_step(params, state, x):
        mem = params["beta"] * state[0] + x.flip(-1)
        return mem, (mem,)

    x = torch.randn(2, 5, dtype=D)
    with pytest.raises(ValueError, match="not elementwise"):
        step_jacobian(mixing_step, {"beta": torch.tensor(0.9, dtype=D)}, (torch.zeros_like(x),), x, check=True)
    # an elementwise step passes the check, which leaves the global random stream alone
    params, state = F.init_params("LI", 5, dtype=D), F.init_state("LI", x)
    torch.manual_seed(3)
    y, _, jac = step_jacobian(F.li_step, params, state, x, check=True)
    after_check = torch.rand(3)
    torch.manual_seed(3)
    y2, _, jac2 = step_jacobian(F.li_step, params, state, x)
    torch.testing.assert_close(torch.rand(3), after_check)
    torch.testing.assert_close(jac.dy_dx, jac2.dy_dx)


# ---- memory flat in T ------------------------------------------------------------------------------


class _SavedBytes:
    """Peak bytes of the tensors autograd keeps alive for backward (saved-tensor hooks)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        box = _Box(t)
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, n)
        return box

    def _free(self, n: int) -> None:
        self.live -= n

    @staticmethod
    def unpack(box):
        return box.t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


class _Box:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


@pytest.mark.slow
def test_memory_flat_in_T_counting_saved_tensors(record_property):
    B, N = 2, 8
    peaks: dict[str, dict[int, int]] = {"bptt": {}, "eprop": {}, "ottt": {}}
    for T in (100, 1000, 10000):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, N), tt.nn.LIB(N, quant_fn="round"), nn.Linear(N, 2))
        xs = torch.rand(T, B, 4)

        def loss_fn(out, t):
            return out.square().sum()

        with _SavedBytes() as meter:
            bptt_reference_grads(net, xs, loss_fn, list(net.parameters()))
        peaks["bptt"][T] = meter.peak
        rules = {"ottt": OTTT(net), "eprop": EProp(net)} if T < 10000 else {"ottt": OTTT(net)}
        for key, rule in rules.items():
            with _SavedBytes() as meter:
                rule.run(xs, loss_fn)
            peaks[key][T] = meter.peak
    record_property("saved_tensor_peak_bytes", peaks)
    for key in ("eprop", "ottt"):
        values = set(peaks[key].values())
        assert len(values) == 1 and values.pop() > 0, (key, peaks[key])  # the same peak whatever T
    bptt = peaks["bptt"]
    assert bptt[1000] > 9 * bptt[100] and bptt[10000] > 9 * bptt[1000], bptt  # BPTT grows with T
    assert peaks["ottt"][100] * 50 < bptt[10000]
