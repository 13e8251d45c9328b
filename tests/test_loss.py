"""tracetorch.loss: values against plain formulas, gradients, shape and dtype errors."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import tracetorch as tt
import tracetorch.loss as loss

DOCS = Path(__file__).resolve().parent.parent / "docs"
T, B, C = 6, 4, 3


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def binary(shape=(T, B, C), p=0.3, seed=0, dtype=torch.float32):
    return (torch.rand(shape, generator=gen(seed)) < p).to(dtype)


TARGETS = torch.tensor([0, 2, 1, 2])


# ---- values -------------------------------------------------------------------------------


def test_count_cross_entropy_is_ce_on_counts():
    s = binary()
    assert torch.allclose(loss.count_cross_entropy(s, TARGETS), F.cross_entropy(s.sum(0), TARGETS))


@pytest.mark.parametrize(
    "reduce, logits",
    [("mean", lambda m: m.mean(0)), ("max", lambda m: m.amax(0)), ("last", lambda m: m[-1])],
)
def test_membrane_cross_entropy_reductions(reduce, logits):
    mem = torch.randn(T, B, C, generator=gen())
    expected = F.cross_entropy(logits(mem), TARGETS)
    assert torch.allclose(loss.membrane_cross_entropy(mem, TARGETS, reduce=reduce), expected)


def test_membrane_cross_entropy_default_is_mean_and_max_grad_hits_peak_only():
    mem = torch.randn(T, B, C, generator=gen()).requires_grad_()
    assert torch.equal(loss.membrane_cross_entropy(mem, TARGETS), loss.membrane_cross_entropy(mem, TARGETS, "mean"))
    loss.membrane_cross_entropy(mem, TARGETS, "max").backward()
    nonzero_steps = (mem.grad != 0).sum(0)
    assert (nonzero_steps == 1).all()  # one step (the peak) per batch element and class


def test_rate_mse_formula_and_perfect_rates():
    s = binary()
    wanted = torch.full((B, C), 0.2)
    wanted[torch.arange(B), TARGETS] = 0.8
    assert torch.allclose(loss.rate_mse(s, TARGETS), ((s.mean(0) - wanted) ** 2).mean())
    # 10 steps: the target fires 8 times, the others twice -> zero loss
    perfect = torch.zeros(10, B, C)
    perfect[:2] = 1
    perfect[2:8, torch.arange(B), TARGETS] = 1
    assert loss.rate_mse(perfect, TARGETS).item() == pytest.approx(0.0)
    assert loss.rate_mse(perfect, TARGETS, on_rate=1.0, off_rate=0.0).item() > 0


def test_first_spike_time_exact_for_binary():
    s = torch.zeros(5, 4)
    s[2, 0] = s[3, 0] = 1  # first at 2
    s[0, 1] = 1  # first at 0
    s[4, 3] = 1  # first at 4; column 2 never fires -> T
    assert loss.first_spike_time(s).tolist() == [2, 0, 5, 4]
    assert loss.first_spike_time(binary((7, 2, 3, 4))).shape == (2, 3, 4)


def test_first_spike_time_gradient_formula():
    s = torch.zeros(5, 2, dtype=torch.float64)
    s[3, 0] = 1
    s.requires_grad_()
    loss.first_spike_time(s).sum().backward()
    # first spike at t0 = 3: d tau / d s_j = -(t0 - j) before it, -(1 + steps to the next spike) at it, 0 after
    assert s.grad[:, 0].tolist() == [-3, -2, -1, -2, 0]
    # never fires: -(T - j)
    assert s.grad[:, 1].tolist() == [-5, -4, -3, -2, -1]


def test_first_spike_time_gradcheck():
    s = torch.rand(4, 2, 3, dtype=torch.float64, generator=gen()).requires_grad_()
    assert torch.autograd.gradcheck(loss.first_spike_time, (s,))
    assert torch.autograd.gradcheck(lambda s: loss.first_spike_time_loss(s, TARGETS[:2]), (s,))


def test_first_spike_time_loss_prefers_early_target():
    s = torch.zeros(8, 1, 3)
    s[1, 0, 0] = 1
    s[5, 0, 1] = 1
    tau = torch.tensor([[1.0, 5.0, 8.0]])
    assert torch.allclose(loss.first_spike_time_loss(s, torch.tensor([0])), F.cross_entropy(-tau, torch.tensor([0])))
    assert loss.first_spike_time_loss(s, torch.tensor([0])) < loss.first_spike_time_loss(s, torch.tensor([1]))
    s.requires_grad_()
    loss.first_spike_time_loss(s, torch.tensor([2])).backward()
    # the silent target (class 2) is pushed to fire: negative gradient (more spike = less loss) at every step
    assert (s.grad[:, 0, 2] < 0).all()
    # class 0 fires first but is wrong: firing at step 0 or 1 would raise the loss
    assert (s.grad[:2, 0, 0] > 0).all()


def test_firing_rate_regularizer_values():
    s = binary((10, 4, 6), p=0.5)
    rates = s.mean(dim=(0, 1))
    assert torch.allclose(loss.firing_rate_regularizer(s, 0.1), ((rates - 0.1) ** 2).mean())
    assert torch.allclose(loss.firing_rate_regularizer(s, 0.1, kind="l1"), (rates - 0.1).abs().mean())
    exact = torch.zeros(10, 4, 6)
    exact[0] = 1  # every neuron at rate 0.1
    assert loss.firing_rate_regularizer(exact, 0.1).item() == pytest.approx(0.0, abs=1e-12)
    # ternary spikes count both polarities
    assert loss.firing_rate_regularizer(-exact, 0.1).item() == pytest.approx(0.0, abs=1e-12)
    # conv maps [T, B, C, H, W]: every element is a neuron
    assert loss.firing_rate_regularizer(binary((5, 2, 3, 4, 4)), 0.2).dim() == 0


def test_firing_rate_upper_bound_only_penalises_excess():
    s = torch.zeros(10, 2, 3, requires_grad=True)
    with torch.no_grad():
        s[:1, :, 0] = 1  # rate 0.1
        s[:5, :, 1] = 1  # rate 0.5
        s[:, :, 2] = 1  # rate 1.0
    quiet = s[:, :, :1]
    assert loss.firing_rate_upper_bound(quiet, max_rate=0.2).item() == 0.0
    value = loss.firing_rate_upper_bound(s, max_rate=0.2)
    assert value.item() == pytest.approx((0.3**2 + 0.8**2) / 3)
    assert loss.firing_rate_upper_bound(s, 0.2, kind="l1").item() == pytest.approx((0.3 + 0.8) / 3)
    value.backward()
    assert (s.grad[:, :, 0] == 0).all() and (s.grad[:, :, 1:] > 0).all()


def test_regularizer_wakes_a_silent_layer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 5), tt.nn.LIB(5, threshold=5.0, quant_fn="round"))
    x = torch.rand(T, B, 8, generator=gen())
    out = torch.stack([net(x[t]) for t in range(T)])
    assert out.sum() == 0  # every spike an exact zero
    loss.firing_rate_regularizer(out, 0.2).backward()
    # d loss / d s < 0 everywhere (more spikes wanted): the threshold is pulled down
    assert (net[1].raw_threshold.grad > 0).all()
    assert net[0].weight.grad.abs().sum() > 0


def test_accuracy_layouts_ties_and_type():
    counts = torch.tensor([[3.0, 1, 0], [0, 0, 2], [1, 1, 0], [2, 5, 5]])  # row 2 and 3 tie
    y = torch.tensor([0, 2, 1, 2])
    acc = loss.accuracy(counts, y)
    assert isinstance(acc, float) and acc == 0.5  # ties go to the lowest index: rows 2, 3 wrong
    spikes = torch.zeros(4, 4, 3)
    spikes[:, torch.arange(4), y] = 1
    assert loss.accuracy(spikes, y) == 1.0
    assert loss.accuracy(spikes.requires_grad_(), y) == 1.0


# ---- gradients through a network ----------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        loss.count_cross_entropy,
        loss.rate_mse,
        loss.first_spike_time_loss,
        lambda s, y: loss.membrane_cross_entropy(s, y, "max"),
        lambda s, y: loss.firing_rate_regularizer(s, 0.05),
        lambda s, y: loss.firing_rate_upper_bound(s, 0.0),
    ],
)
def test_gradients_reach_the_network_through_the_surrogate(fn):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, C), tt.nn.LIB(C, threshold=0.5, quant_fn="round"))
    x = torch.rand(T, B, 8, generator=gen()) * 2
    out = torch.stack([net(x[t]) for t in range(T)])
    value = fn(out, TARGETS)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    grad = net[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert net[1].raw_threshold.grad.abs().sum() > 0


def test_losses_vmap_over_a_population_equals_loop():
    pop = binary((3, T, B, C))
    for fn in (loss.count_cross_entropy, loss.rate_mse, loss.first_spike_time_loss):
        batched = vmap(fn, in_dims=(0, None))(pop, TARGETS)
        assert torch.allclose(batched, torch.stack([fn(s, TARGETS) for s in pop]))


def test_dtype_kept():
    s = binary(dtype=torch.float64)
    for fn in (loss.count_cross_entropy, loss.rate_mse, loss.first_spike_time_loss, loss.membrane_cross_entropy):
        assert fn(s, TARGETS).dtype == torch.float64
    assert loss.firing_rate_regularizer(s).dtype == torch.float64


# ---- errors -------------------------------------------------------------------------------

TBC_LOSSES = [
    ("count_cross_entropy", "spikes", loss.count_cross_entropy),
    ("membrane_cross_entropy", "mem", loss.membrane_cross_entropy),
    ("rate_mse", "spikes", loss.rate_mse),
    ("first_spike_time_loss", "spikes", loss.first_spike_time_loss),
]


@pytest.mark.parametrize("name, arg, fn", TBC_LOSSES)
def test_shape_errors_name_function_argument_expected_and_received(name, arg, fn):
    s = binary()
    with pytest.raises(ValueError, match=re.escape(f"{name}: {arg} must be [T, B, C], received shape [4, 3]")):
        fn(s[0], TARGETS)
    with pytest.raises(
        ValueError,
        match=re.escape(f"{name}: targets must be [B] with B=4 (from {arg} [6, 4, 3]), received shape [3]"),
    ):
        fn(s, TARGETS[:3])
    with pytest.raises(ValueError, match=re.escape(f"{name}: targets must be [B] with B=4")):
        fn(s, TARGETS[None])
    with pytest.raises(
        TypeError, match=f"{name}: targets must hold integer class indices, received dtype torch.float32"
    ):
        fn(s, TARGETS.float())
    with pytest.raises(TypeError, match=f"{name}: {arg} must be a floating-point tensor, received dtype torch.int64"):
        fn(s.long(), TARGETS)
    with pytest.raises(TypeError, match=f"{name}: {arg} must be a tensor"):
        fn(s.tolist(), TARGETS)


def test_other_errors():
    s = binary()
    with pytest.raises(
        ValueError, match=r"membrane_cross_entropy: reduce must be one of \['mean', 'max', 'last'\], received 'sum'"
    ):
        loss.membrane_cross_entropy(s, TARGETS, reduce="sum")
    with pytest.raises(ValueError, match=r"firing_rate_regularizer: kind must be one of \['l2', 'l1'\], received 'l3'"):
        loss.firing_rate_regularizer(s, kind="l3")
    with pytest.raises(
        ValueError,
        match=r"firing_rate_upper_bound: spikes must be \[T, B, ...\] \(time, batch, neurons\), received shape \[6, 3\]",
    ):
        loss.firing_rate_upper_bound(s[:, 0])
    with pytest.raises(ValueError, match="firing_rate_regularizer: target_rate must be a finite number, received 'x'"):
        loss.firing_rate_regularizer(s, "x")
    with pytest.raises(ValueError, match="rate_mse: on_rate must be a finite number"):
        loss.rate_mse(s, TARGETS, on_rate=float("nan"))
    with pytest.raises(
        ValueError, match=re.escape("accuracy: spikes_or_counts must be [T, B, C] or [B, C], received shape [3]")
    ):
        loss.accuracy(torch.rand(3), TARGETS)
    with pytest.raises(
        ValueError, match=re.escape("accuracy: targets must be [B] with B=6 (from spikes_or_counts [6, 3])")
    ):
        loss.accuracy(torch.rand(6, 3), TARGETS)
    with pytest.raises(ValueError, match="accuracy: the batch is empty"):
        loss.accuracy(torch.rand(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"first_spike_time: spikes must be \[T, ...\], received shape \[\]"):
        loss.first_spike_time(torch.tensor(1.0))


def test_losses_doc_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "losses.md").read_text(), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/losses.md", "exec"), {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_cuda_parity():
    s, y = binary(), TARGETS
    sc, yc = s.cuda(), y.cuda()
    for fn in (loss.count_cross_entropy, loss.rate_mse, loss.first_spike_time_loss, loss.membrane_cross_entropy):
        assert torch.allclose(fn(sc, yc).cpu(), fn(s, y), atol=1e-6)
    assert torch.allclose(loss.firing_rate_regularizer(sc).cpu(), loss.firing_rate_regularizer(s))
    assert loss.accuracy(sc, yc) == loss.accuracy(s, y)
