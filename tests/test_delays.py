"""Delays (tt.nn.Delay, tt.nn.DelayedLinear, tracetorch.functional.delays) against a plainly written
reference: exact shifts, interpolation and its gradients, per step = sequence mode, the state's
lifecycle (save/load mid-sequence, set, zero, detach), vmap over populations, bad delays refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import stack_module_state, vmap

import tracetorch as tt
from tracetorch import functional as F

# ---- the reference: one channel, one step at a time, plain Python --------------------------------


def ref_read(xs: list[float], t: int, d: float, max_delay: int) -> float:
    """x_{t-d} of one channel's sequence ``xs`` (zeros before step 0), linear between neighbouring steps."""

    def at(s: int) -> float:
        return xs[s] if s >= 0 else 0.0

    k = min(math.floor(d), max_delay - 1)
    f = d - k
    if f == 0:
        return at(t - k)
    return (1 - f) * at(t - k) + f * at(t - k - 1)


def ref_delay(xs: torch.Tensor, delay: list[float], max_delay: int) -> torch.Tensor:
    """``xs`` ``[T, B, N]`` delayed per channel."""
    T, B, N = xs.shape
    out = torch.zeros(T, B, N, dtype=torch.float64)
    for b in range(B):
        for n in range(N):
            seq = xs[:, b, n].tolist()
            for t in range(T):
                out[t, b, n] = ref_read(seq, t, delay[n], max_delay)
    return out


def ref_delayed_linear(xs, weight, delay, bias, max_delay) -> torch.Tensor:
    """``xs`` ``[T, B, in]`` -> ``[T, B, out]``: every synapse reads its input at its own delay."""
    T, B, n_in = xs.shape
    n_out = weight.shape[0]
    out = torch.zeros(T, B, n_out, dtype=torch.float64)
    for b in range(B):
        for o in range(n_out):
            for t in range(T):
                total = float(bias[o])
                for i in range(n_in):
                    total += float(weight[o, i]) * ref_read(xs[:, b, i].tolist(), t, float(delay[o, i]), max_delay)
                out[t, b, o] = total
    return out


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---- exact shifts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 3, 5, 9])  # shorter than, equal to and longer than the delays
@pytest.mark.parametrize("mode", ["steps", "run"])
def test_integer_delays_are_exact_shifts_at_every_position(T, mode):
    max_delay = 5
    delays = [0, 1, 3, 5]  # d = 0 and d = max_delay included
    layer = tt.nn.Delay(4, max_delay, delay=torch.tensor(delays))
    xs = torch.randn(T, 2, 4)
    ys = tt.nn.run(layer, xs) if mode == "run" else torch.stack([layer(x) for x in xs])
    for t in range(T):
        for n, d in enumerate(delays):
            expected = xs[t - d, :, n] if t >= d else torch.zeros(2)
            assert torch.equal(ys[t, :, n], expected), (t, n, d)
    assert ys.dtype == xs.dtype and ys.shape == xs.shape
    assert torch.equal(ys.double(), ref_delay(xs.double(), delays, max_delay))


def test_exact_delays_ignore_non_finite_neighbours():
    layer = tt.nn.Delay(2, 3, delay=torch.tensor([1, 2]))
    xs = torch.tensor([[1.0, 1.0], [math.inf, math.nan], [3.0, 3.0], [4.0, 4.0], [5.0, 5.0]])
    ys = tt.nn.run(layer, xs)
    assert torch.equal(ys[3:, 0], torch.tensor([3.0, 4.0]))  # no inf leaks into the neighbouring steps
    assert torch.equal(ys[4:, 1], torch.tensor([3.0]))
    assert math.isinf(ys[2, 0]) and math.isnan(ys[3, 1])


def test_channel_dim_and_leading_dims():
    layer = tt.nn.Delay(3, 2, delay=torch.tensor([0, 1, 2]), dim=-3)  # [B, C, H, W]
    xs = torch.randn(4, 2, 3, 2, 2)
    ys = tt.nn.run(layer, xs)
    assert layer.buffer.shape == (2, 2, 3, 2, 2)
    for c, d in enumerate([0, 1, 2]):
        expected = torch.cat([torch.zeros(d, 2, 2, 2), xs[: 4 - d, :, c]])
        assert torch.equal(ys[:, :, c], expected)
    layer.zero_states()
    assert torch.equal(torch.stack([layer(x) for x in xs]), ys)


def test_scalar_delay_and_unbatched_input():
    layer = tt.nn.Delay(3, 4, delay=2, delay_rank=0)
    assert layer.delay.shape == ()
    xs = torch.randn(6, 3)  # [T, N]: one unbatched sequence
    ys = tt.nn.run(layer, xs)
    assert torch.equal(ys, torch.cat([torch.zeros(2, 3), xs[:4]]))


# ---- interpolation -----------------------------------------------------------------------------------


def test_fractional_delays_interpolate_like_the_reference(float64):
    delays = [0.0, 0.25, 1.5, 2.75, 4.0]
    layer = tt.nn.Delay(5, 4, delay=torch.tensor(delays), learn_delay=True)
    xs = torch.randn(7, 2, 5)
    ys = tt.nn.run(layer, xs)
    torch.testing.assert_close(ys, ref_delay(xs, delays, 4), rtol=0, atol=1e-15)
    layer.zero_states()
    torch.testing.assert_close(torch.stack([layer(x) for x in xs]), ys, rtol=0, atol=0)


def test_learnable_integer_delay_reads_exactly_and_gets_a_gradient():
    layer = tt.nn.Delay(1, 3, delay=1, learn_delay=True)
    xs = torch.arange(1.0, 6.0).reshape(5, 1)
    ys = tt.nn.run(layer, xs)
    assert torch.equal(ys[:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    ys.sum().backward()
    # d/dd of x_{t-d} at an integer d: the slope towards the next longer delay, x_{t-2} - x_{t-1}
    assert layer.raw_delay.grad.item() == pytest.approx(-4.0)


def test_gradcheck_delay_scan_wrt_inputs_buffer_and_delays(float64):
    delay = torch.tensor([0.3, 1.6, 2.5], requires_grad=True)  # away from the kinks at integers
    buffer = torch.randn(3, 2, 3, requires_grad=True)
    xs = torch.randn(4, 2, 3, requires_grad=True)

    def fn(delay, buffer, xs):
        ys, state = F.delay_scan(F.DelayParams(delay), F.DelayState(buffer), xs)
        return ys, state.buffer

    assert gradcheck(fn, (delay, buffer, xs), check_batched_grad=True)
    scalar = torch.tensor(1.4, requires_grad=True)
    assert gradcheck(lambda d, xs: fn(d, buffer.detach(), xs)[0], (scalar, xs))


def test_gradcheck_delayed_linear_wrt_everything(float64):
    weight = torch.randn(2, 3, requires_grad=True)
    delay = torch.tensor([[0.2, 1.5, 2.7], [3.0 - 0.4, 0.6, 1.1]], requires_grad=True)
    bias = torch.randn(2, requires_grad=True)
    buffer = torch.randn(3, 2, 3, requires_grad=True)
    xs = torch.randn(4, 2, 3, requires_grad=True)

    def fn(weight, delay, bias, buffer, xs):
        ys, state = F.delayed_linear_scan(F.DelayedLinearParams(weight, delay, bias), F.DelayState(buffer), xs)
        return ys, state.buffer

    assert gradcheck(fn, (weight, delay, bias, buffer, xs), check_batched_grad=True)


def test_delayed_linear_equals_the_reference(float64):
    layer = tt.nn.DelayedLinear(3, 2, 4, delay=torch.tensor([[0.0, 1.25, 4.0], [2.5, 3.0, 0.75]]))
    xs = torch.randn(6, 2, 3)
    ys = tt.nn.run(layer, xs)
    expected = ref_delayed_linear(xs, layer.weight.detach(), layer.delay.detach(), layer.bias.detach(), 4)
    torch.testing.assert_close(ys, expected, rtol=1e-12, atol=1e-12)


def test_delayed_linear_with_zero_delays_is_a_linear_layer():
    layer = tt.nn.DelayedLinear(5, 4, 3, delay=0.0)
    linear = nn.Linear(5, 4)
    linear.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x = torch.randn(2, 7, 5)  # leading dims beyond the batch
    torch.testing.assert_close(layer(x), linear(x))
    assert layer.buffer.shape == (3, 2, 7, 5)


def test_delay_kernel_taps():
    weight = torch.tensor([[2.0, -1.0]])
    kernel = F.delay_kernel(weight, torch.tensor([[0.0, 1.25]]), 2)
    assert torch.equal(kernel, torch.tensor([[[2.0, 0.0, 0.0], [0.0, -0.75, -0.25]]]))
    assert torch.equal(F.delay_kernel(weight, torch.tensor(2.0), 2)[0, :, 2], weight[0])


# ---- per step = sequence mode, interleaved ------------------------------------------------------------


class Net(tt.TTModel):
    def __init__(self, learn_delay=True):
        super().__init__()
        self.net = nn.Sequential(
            tt.nn.DelayedLinear(4, 6, 3),
            tt.nn.LIB(6, quant_fn="round"),
            tt.nn.Delay(6, 4, delay=torch.tensor([0.0, 1.0, 2.5, 3.0, 4.0, 0.5]), learn_delay=learn_delay),
            nn.Linear(6, 2),
        )

    def forward(self, x):
        return self.net(x)


def test_per_step_equals_sequence_mode_with_gradients(float64):
    torch.manual_seed(0)
    model = Net()
    xs = torch.randn(9, 3, 4)
    ys_run = model.run(xs)
    g_run = torch.autograd.grad(ys_run.square().sum(), list(model.parameters()))
    final = model.save_states()
    model.zero_states()
    ys_step = torch.stack([model(x) for x in xs])
    g_step = torch.autograd.grad(ys_step.square().sum(), list(model.parameters()))
    torch.testing.assert_close(ys_run, ys_step, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_run, g_step):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for k, v in model.save_states().items():
        torch.testing.assert_close(v, final[k], rtol=1e-12, atol=1e-12)
    names = [n for n, _ in model.named_parameters()]
    delay_grads = [g for n, g in zip(names, g_run) if n.endswith("raw_delay")]
    assert len(delay_grads) == 2 and all(bool(torch.isfinite(g).all()) and g.abs().sum() > 0 for g in delay_grads)


def test_sequence_and_steps_interleave_and_options(float64):
    model = Net()
    xs = torch.randn(8, 2, 4)
    full = model.run(xs)
    model.zero_states()
    first = model.run(xs[:3])
    middle = torch.stack([model(x) for x in xs[3:5]])
    rest = model.run(xs[5:], checkpoint=2)
    torch.testing.assert_close(torch.cat([first, middle, rest]), full, rtol=1e-12, atol=1e-12)
    model.zero_states()
    torch.testing.assert_close(model.run(xs, detach_every=3), full, rtol=1e-12, atol=1e-12)


# ---- state lifecycle ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_mid_sequence_and_resume(suffix, tmp_path):
    torch.manual_seed(1)
    model = Net()
    xs = torch.randn(10, 2, 4)
    uninterrupted = model.run(xs)
    model.zero_states()
    head = model.run(xs[:4])
    model.save_states(tmp_path / f"mid{suffix}")
    fresh = copy.deepcopy(model)
    fresh.zero_states()
    fresh.load_states(tmp_path / f"mid{suffix}")
    assert torch.equal(fresh.net[0].buffer, model.net[0].buffer)
    assert torch.equal(fresh.net[2].buffer, model.net[2].buffer)
    tail = torch.stack([fresh(x) for x in xs[4:6]])
    tail = torch.cat([tail, fresh.run(xs[6:])])
    torch.testing.assert_close(torch.cat([head, tail]), uninterrupted, rtol=1e-6, atol=1e-6)


def test_state_is_zeroed_detached_set_and_validated():
    model = Net()
    xs = torch.randn(5, 2, 4, requires_grad=True)
    model.run(xs)
    delay = model.net[2]
    assert delay.buffer.shape == (4, 2, 6) and delay.buffer.requires_grad
    model.detach_states()
    assert not delay.buffer.requires_grad
    states = model.get_states()
    assert set(states) == {"net.0", "net.1", "net.2"} and list(states["net.2"]._fields) == ["buffer"]
    before = delay.buffer.clone()
    with pytest.raises(ValueError, match=r"net\.2\.buffer: shape \[3, 2, 6\], expected \[max_delay=4"):
        model.set_states({**states, "net.2": {"buffer": torch.zeros(3, 2, 6)}})
    with pytest.raises(ValueError, match="along dim=-1"):
        model.set_states({**states, "net.2": {"buffer": torch.zeros(4, 2, 5)}})
    assert torch.equal(delay.buffer, before)
    new = torch.randn(4, 2, 6)
    model.set_states({**states, "net.2": {"buffer": new}})
    assert delay.buffer is new
    with pytest.raises(
        ValueError, match=r"net\.0 \(DelayedLinear\): hidden state 'buffer' has shape \[3, 2, 4\].*zero_states"
    ):
        model(torch.randn(3, 4))  # a batch-size change without zero_states()
    model.zero_states()
    assert delay.buffer is None and delay.state is None
    model(torch.randn(3, 4))
    assert delay.buffer.shape == (4, 3, 6)


def test_module_hygiene():
    layer = tt.nn.Delay(3, 2, delay=1, learn_delay=True)
    layer(torch.randn(2, 3))
    clone = copy.deepcopy(layer)
    assert torch.equal(clone.buffer, layer.buffer) and clone.buffer is not layer.buffer
    assert set(layer.state_dict()) == {"raw_delay"}
    double = tt.nn.DelayedLinear(3, 2, 2).double()
    assert double.weight.dtype == double.raw_delay.dtype == torch.float64
    assert double(torch.randn(4, 3, dtype=torch.float64)).dtype == torch.float64
    layer.TTcompile()
    assert torch.equal(layer(torch.ones(2, 3)), clone(torch.ones(2, 3)))
    layer.TTuncompile()
    assert "max_delay=2" in repr(layer) and "learnable" in repr(layer)


# ---- populations --------------------------------------------------------------------------------------


def test_vmap_population_of_delay_models_equals_loop():
    torch.manual_seed(2)
    models = [Net(learn_delay=True) for _ in range(3)]
    with torch.no_grad():
        for i, m in enumerate(models):
            m.net[2].delay = torch.full((6,), float(i) + 0.5)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = torch.randn(5, 2, 4)

    def member(params, buffers, states, x):
        return tt.functional_call(base, {**params, **buffers}, states, x)

    states, outs = None, []
    for x in xs:
        out, states = vmap(member, in_dims=(0, 0, 0 if states else None, None))(params, buffers, states, x)
        outs.append(out)
    for i, m in enumerate(models):
        for t, x in enumerate(xs):
            torch.testing.assert_close(outs[t][i], m(x))
        torch.testing.assert_close(states["net.2"].buffer[i], m.net[2].buffer)
        torch.testing.assert_close(states["net.0"].buffer[i], m.net[0].buffer)


def test_vmap_functional_delay_over_stacked_delays():
    delays = torch.tensor([[0.0, 2.0], [1.0, 3.0], [3.0, 0.0]])  # 3 members, 2 channels
    xs = torch.randn(6, 4, 2)
    state = F.init_delay_state(xs[0], 3)
    ys, _ = vmap(lambda d: F.delay_scan(F.DelayParams(d), state, xs, exact=True))(delays)
    for i in range(3):
        expected = F.delay_scan(F.DelayParams(delays[i]), state, xs, exact=True)[0]
        assert torch.equal(ys[i], expected)
        assert torch.equal(expected.double(), ref_delay(xs.double(), delays[i].tolist(), 3))


# ---- bad delays -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"delay": -1}, ValueError, r"Delay: delay must lie in \[0, max_delay=3\] steps, received -1"),
        ({"delay": 3.5}, ValueError, r"Delay: delay must lie in \[0, max_delay=3\] steps, received 3\.5"),
        ({"delay": torch.tensor([0.0, 4.0, 1.0])}, ValueError, r"delay must lie in \[0, max_delay=3\].*max 4"),
        ({"delay": torch.zeros(2)}, ValueError, r"Delay: delay must have shape \[3\] or \[\], received shape \[2\]"),
        ({"delay": torch.zeros(3, 1)}, ValueError, r"received shape \[3, 1\]"),
        ({"delay": math.nan}, ValueError, r"Delay: delay must be finite, received nan"),
        ({"delay": torch.tensor([0.0, math.inf, 1.0])}, ValueError, "delay must be finite"),
        ({"delay": True}, TypeError, "Delay: delay must be a number or a real tensor"),
        ({"delay": "2"}, TypeError, "received str"),
        ({"delay": torch.zeros(3, dtype=torch.complex64)}, TypeError, "delay must be real"),
        ({"max_delay": 0}, ValueError, r"Delay: max_delay must be an int >= 1 \(steps\), received 0"),
        ({"max_delay": 2.0}, ValueError, "max_delay must be an int"),
        ({"dim": 1}, ValueError, r"Delay: dim must count from the end"),
        ({"delay_rank": 2}, ValueError, "delay_rank must be 0"),
        ({"learn_delay": 1}, TypeError, "learn_delay must be a bool"),
    ],
)
def test_bad_delays_are_refused(kwargs, error, pattern):
    args = {"num_neurons": 3, "max_delay": 3, **kwargs}
    with pytest.raises(error, match=pattern):
        tt.nn.Delay(**args)


def test_bad_delayed_linear_delays_are_refused():
    with pytest.raises(
        ValueError, match=r"DelayedLinear: delay must have shape \[2, 3\] or \[\], received shape \[3, 2\]"
    ):
        tt.nn.DelayedLinear(3, 2, 4, delay=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"DelayedLinear: delay must lie in \[0, max_delay=4\]"):
        tt.nn.DelayedLinear(3, 2, 4, delay=torch.full((2, 3), 5.0))
    with pytest.raises(ValueError, match="DelayedLinear: max_delay must be an int >= 1"):
        tt.nn.DelayedLinear(3, 2, -2)
    with pytest.raises(ValueError, match="DelayedLinear: out_features must be an int >= 1"):
        tt.nn.DelayedLinear(3, 0, 2)


def test_bad_assignment_leaves_the_delay_unchanged():
    layer = tt.nn.Delay(3, 4, delay=torch.tensor([1.0, 2.0, 3.0]), learn_delay=True)
    raw = layer.raw_delay
    for bad in (-0.5, 4.5, torch.zeros(4), math.inf, torch.zeros(3, 3)):
        with pytest.raises(ValueError, match="Delay: delay"):
            layer.delay = bad
        assert torch.equal(layer.delay, torch.tensor([1.0, 2.0, 3.0]))
    layer.delay = 2
    assert layer.raw_delay is raw and torch.equal(layer.delay, torch.full((3,), 2.0))
    layer.delay = torch.tensor([0.0, 4.0, 1.5])
    assert torch.equal(layer.delay, torch.tensor([0.0, 4.0, 1.5]))


def test_a_learnt_delay_out_of_range_is_read_clamped():
    layer = tt.nn.Delay(1, 2, delay=1.0, learn_delay=True)
    with torch.no_grad():
        layer.raw_delay.fill_(7.0)  # as an optimizer might leave it
    xs = torch.arange(1.0, 5.0).reshape(4, 1)
    assert torch.equal(tt.nn.run(layer, xs)[:, 0], torch.tensor([0.0, 0.0, 1.0, 2.0]))


def test_functional_refuses_a_mismatched_buffer():
    with pytest.raises(ValueError, match=r"delay_scan: the state's buffer must be \[max_delay >= 1"):
        F.delay_scan(F.DelayParams(torch.zeros(2)), F.DelayState(torch.zeros(3, 5, 2)), torch.zeros(4, 4, 2))
