"""tracetorch.encode: shapes, values, seeded determinism, vmap, gradients, errors."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch.func import vmap

import tracetorch.encode as encode

DOCS = Path(__file__).resolve().parent.parent / "docs"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- rate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 1, 4, 4)])
def test_rate_shape_dtype_values(shape, dtype):
    x = torch.rand(shape, dtype=dtype, generator=gen())
    s = encode.rate(x, 7, generator=gen(1))
    assert s.shape == (7, *shape) and s.dtype == dtype
    assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_rate_extremes_gain_and_nan():
    x = torch.tensor([-0.5, 0.0, 1.0, 3.0, 0.25, float("nan")])
    s = encode.rate(x, 200, generator=gen())
    assert s[:, :2].sum() == 0 and s[:, 5].sum() == 0
    assert (s[:, 2:4] == 1).all()
    # gain 4 takes 0.25 to probability 1
    assert (encode.rate(x, 50, gain=4.0, generator=gen())[:, 4] == 1).all()
    assert encode.rate(x, 50, gain=0.0, generator=gen()).sum() == 0


def test_rate_mean_matches_probability():
    p = torch.tensor([0.1, 0.5, 0.9])
    s = encode.rate(p.expand(400, 3), 50, generator=gen())  # 20,000 draws per probability
    assert torch.allclose(s.mean(dim=(0, 1)), p, atol=0.02)


def test_rate_seeded_determinism():
    x = torch.rand(4, 10, generator=gen())
    assert torch.equal(encode.rate(x, 20, generator=gen(3)), encode.rate(x, 20, generator=gen(3)))
    assert not torch.equal(encode.rate(x, 20, generator=gen(3)), encode.rate(x, 20, generator=gen(4)))
    torch.manual_seed(5)
    a = encode.rate(x, 20)
    torch.manual_seed(5)
    assert torch.equal(a, encode.rate(x, 20))


def test_rate_noise_is_pure_and_exact():
    x = torch.rand(3, 4, generator=gen())
    noise = torch.rand(6, 3, 4, generator=gen(1))
    s = encode.rate(x, 6, noise=noise)
    assert torch.equal(s, (noise < x).float())
    # the generator is ignored when noise is given
    assert torch.equal(s, encode.rate(x, 6, noise=noise, generator=gen(9)))


def test_rate_vmap_with_noise_equals_loop():
    x = torch.rand(5, 8, generator=gen())
    noise = torch.rand(5, 4, 8, generator=gen(1))
    out = vmap(lambda xi, ni: encode.rate(xi, 4, noise=ni))(x, noise)
    loop = torch.stack([encode.rate(x[i], 4, noise=noise[i]) for i in range(5)])
    assert out.shape == (5, 4, 8) and torch.equal(out, loop)


def test_rate_vmap_randomness_flags():
    x = torch.full((6, 50), 0.5)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda xi: encode.rate(xi, 10))(x)
    different = vmap(lambda xi: encode.rate(xi, 10), randomness="different")(x)
    assert different.shape == (6, 10, 50)
    assert not torch.equal(different[0], different[1])
    same = vmap(lambda xi: encode.rate(xi, 10), randomness="same")(x)
    assert all(torch.equal(same[0], same[i]) for i in range(6))
    # a seeded generator is honoured under vmap too
    a = vmap(lambda xi: encode.rate(xi, 10, generator=gen(2)), randomness="different")(x)
    b = vmap(lambda xi: encode.rate(xi, 10, generator=gen(2)), randomness="different")(x)
    assert torch.equal(a, b)


def test_rate_no_gradient_and_integer_input():
    x = torch.rand(4, requires_grad=True)
    assert not encode.rate(x, 3, generator=gen()).requires_grad
    s = encode.rate(torch.tensor([0, 1, 1]), 4, generator=gen())
    assert s.dtype == torch.get_default_dtype() and (s[:, 1:] == 1).all() and (s[:, 0] == 0).all()


def test_rate_errors():
    x = torch.rand(3)
    with pytest.raises(
        ValueError, match=r"rate: noise must have shape \[num_steps, \*x.shape\] = \[4, 3\], received \[4, 2\]"
    ):
        encode.rate(x, 4, noise=torch.rand(4, 2))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"rate: num_steps must be an int >= 1"):
            encode.rate(x, bad)
    with pytest.raises(TypeError, match="rate: x must be a tensor, received list"):
        encode.rate([0.5], 3)
    with pytest.raises(TypeError, match="rate: gain must be a number"):
        encode.rate(x, 3, gain="2")


# ---- latency ------------------------------------------------------------------------------


def first_step(s):
    """Index of the single spike along time, or -1 where there is none."""
    return torch.where(s.sum(0) > 0, s.argmax(0), torch.full(s.shape[1:], -1))


def test_latency_linear_exact_times():
    x = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.02, 0.005, 0.0, -1.0, 2.0, float("nan")])
    s = encode.latency(x, 5)
    assert s.shape == (5, 10)
    assert (s.sum(0) <= 1).all()
    # t = round((1 - x) * 4); below threshold 0.01 (and NaN) never fires; x is clamped to [0, 1]
    assert first_step(s).tolist() == [0, 1, 2, 3, 4, -1, -1, -1, 0, -1]


def test_latency_threshold_zero_fires_everything_and_monotone():
    x = torch.linspace(0, 1, 101)
    t = first_step(encode.latency(x, 20, threshold=0.0))
    assert (t >= 0).all() and t[0] == 19 and t[-1] == 0
    assert (t[1:] <= t[:-1]).all()  # stronger input, earlier (or same) spike


def test_latency_log_normalized_spans_window():
    x = torch.tensor([1.0, 0.1, 0.01, 0.009, 0.5])
    t = first_step(encode.latency(x, 11, linear=False, threshold=0.01))
    expected = [0, 5, 10, -1, round(10 * math.log(0.5) / math.log(0.01))]
    assert t.tolist() == expected
    xs = torch.linspace(0.01, 1, 200)
    ts = first_step(encode.latency(xs, 30, linear=False))
    assert (ts[1:] <= ts[:-1]).all()


def test_latency_unnormalized_uses_tau_and_drops_late_spikes():
    x = torch.tensor([1.0, 0.8, 0.5, 0.1])
    # linear: t = round(tau * (1 - x)) = [0, 2, 5, 9] with tau=10; 9 is past a 6-step window
    assert first_step(encode.latency(x, 6, normalize=False, tau=10.0)).tolist() == [0, 2, 5, -1]
    # log: t = round(tau * ln(1/x)) = [0, 1, 3, 12] with tau=5
    t = first_step(encode.latency(x, 8, normalize=False, linear=False, tau=5.0))
    assert t.tolist() == [0, 1, 3, -1]


@pytest.mark.parametrize("linear", [True, False])
def test_latency_vmap_and_dtype(linear):
    x = torch.rand(4, 3, 5, dtype=torch.float64, generator=gen())
    out = vmap(lambda xi: encode.latency(xi, 9, linear=linear))(x)
    loop = torch.stack([encode.latency(xi, 9, linear=linear) for xi in x])
    assert out.shape == (4, 9, 3, 5) and out.dtype == torch.float64 and torch.equal(out, loop)
    assert not encode.latency(x.requires_grad_(), 9).requires_grad


def test_latency_errors():
    x = torch.rand(3)
    with pytest.raises(ValueError, match=r"latency: threshold must be a number in \[0, 1\), received 1.0"):
        encode.latency(x, 5, threshold=1.0)
    with pytest.raises(
        ValueError, match=r"latency: threshold must be a number in \(0, 1\) for the normalized logarithmic"
    ):
        encode.latency(x, 5, linear=False, threshold=0.0)
    with pytest.raises(ValueError, match=r"latency: tau must be a finite number > 0, received -1"):
        encode.latency(x, 5, tau=-1)
    with pytest.raises(ValueError, match="latency: num_steps"):
        encode.latency(x, 0)


# ---- delta --------------------------------------------------------------------------------


def test_delta_hand_example_and_reference_level():
    s = torch.tensor([0.0, 0.05, 0.12, 0.1, -0.2, -0.25, 0.3])
    # ref 0 -> +1 at 0.12 (ref 0.12) -> -1 at -0.2 (ref -0.2) -> +1 at 0.3
    assert encode.delta(s, 0.1).tolist() == [0, 0, 1, 0, -1, 0, 1]
    assert encode.delta(s, 0.1, off_spikes=False).tolist() == [0, 0, 1, 0, 0, 0, 1]


def test_delta_accumulates_slow_drift():
    ramp = 0.04 * torch.arange(13, dtype=torch.float64)  # never moves more than 0.1 in one step
    events = encode.delta(ramp, 0.1)
    assert events.dtype == torch.float64
    # crossings at steps 3, 6, 9, 12 (0.12 above each new reference)
    assert torch.nonzero(events).flatten().tolist() == [3, 6, 9, 12]
    assert (events[events != 0] == 1).all()


def test_delta_off_spikes_false_still_moves_reference():
    s = torch.tensor([0.0, -0.5, 0.0])
    assert encode.delta(s, 0.2, off_spikes=False).tolist() == [0, 0, 1]
    assert encode.delta(s, 0.2).tolist() == [0, -1, 1]


def test_delta_shapes_tensor_threshold_and_vmap():
    sig = torch.randn(20, 3, 4, generator=gen()).cumsum(0)
    out = encode.delta(sig, 0.5)
    assert out.shape == sig.shape and set(out.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (out[0] == 0).all()
    # a per-channel threshold equals running each channel with its own number
    th = torch.tensor([0.2, 0.5, 1.0, 2.0])
    per = encode.delta(sig, th)
    for c in range(4):
        assert torch.equal(per[..., c], encode.delta(sig[..., c], float(th[c])))
    batched = vmap(lambda s: encode.delta(s, 0.5), in_dims=1, out_dims=1)(sig)
    assert torch.equal(batched, out)


def test_delta_errors():
    with pytest.raises(ValueError, match="delta: signal must have a leading time dimension"):
        encode.delta(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"delta: threshold must be a finite number > 0, received 0"):
        encode.delta(torch.rand(3), 0)


# ---- population ---------------------------------------------------------------------------


def test_population_values_and_centres():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    a = encode.population(x, 5)
    assert a.shape == (4, 5)
    assert ((a > 0) & (a <= 1)).all()
    assert a.argmax(-1).tolist() == [0, 1, 2, 4]
    assert torch.allclose(a[[0, 1, 2, 3], [0, 1, 2, 4]], torch.ones(4))
    # default sigma is the spacing: the neighbours of a centre sit at exp(-1/2)
    assert torch.allclose(a[2, [1, 3]], torch.full((2,), math.exp(-0.5)))


def test_population_range_sigma_shape_dtype():
    x = torch.rand(2, 3, dtype=torch.float64, generator=gen()) * 10 - 5
    a = encode.population(x, 7, low=-5.0, high=5.0, sigma=0.1)
    assert a.shape == (2, 3, 7) and a.dtype == torch.float64
    centres = torch.linspace(-5, 5, 7, dtype=torch.float64)
    assert torch.allclose(a, torch.exp(-0.5 * ((x[..., None] - centres) / 0.1) ** 2))
    one = encode.population(torch.tensor([0.3]), 1)
    assert one.shape == (1, 1)


def test_population_gradients_and_vmap():
    x = torch.rand(3, dtype=torch.float64, generator=gen()).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: encode.population(x, 4), (x,))
    xs = torch.rand(5, 3, generator=gen())
    assert torch.equal(vmap(lambda xi: encode.population(xi, 6))(xs), encode.population(xs, 6))


def test_population_errors():
    with pytest.raises(ValueError, match="population: num_neurons must be an int >= 1, received 0"):
        encode.population(torch.rand(3), 0)
    with pytest.raises(ValueError, match="population: low must be below high, received low=1.0, high=1.0"):
        encode.population(torch.rand(3), 4, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="population: sigma must be a finite number > 0, received 0.0"):
        encode.population(torch.rand(3), 4, sigma=0.0)


# ---- docs ---------------------------------------------------------------------------------


def test_encoders_doc_snippets_run():
    text = (DOCS / "encoders.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/encoders.md[{i}]", "exec"), {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encoders_cuda_parity():
    x = torch.rand(3, 8, generator=gen())
    noise = torch.rand(5, 3, 8, generator=gen(1))
    cuda = torch.device("cuda")
    assert torch.equal(encode.rate(x.to(cuda), 5, noise=noise.to(cuda)).cpu(), encode.rate(x, 5, noise=noise))
    assert encode.rate(x.to(cuda), 5).device.type == "cuda"
    for linear in (True, False):
        assert torch.equal(encode.latency(x.to(cuda), 7, linear=linear).cpu(), encode.latency(x, 7, linear=linear))
    sig = x.T.contiguous()  # [8, 3]
    assert torch.equal(encode.delta(sig.to(cuda), 0.2).cpu(), encode.delta(sig, 0.2))
    assert torch.allclose(encode.population(x.to(cuda), 4).cpu(), encode.population(x, 4))
