"""Sequence mode (``tt.nn.sequence.run``) against the per-step loop: outputs, states, every gradient."""

import copy

import pytest
import torch
from torch import nn

import tracetorch as tt
from tracetorch.functional.spikes import round_st, sigmoid4x
from tracetorch.nn.sequence import plan, register_stateless, run, stateless

T, B = 7, 3


@pytest.fixture(autouse=True, scope="module")
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class ALIF(tt.TTLayer):
    """A custom layer (the TTLayer docstring's example): movedim path, plain loop."""

    def __init__(self, num_neurons, dim=-1):
        super().__init__(num_neurons, dim)
        self.register_decay("beta", 0.9)
        self.register_decay("rho", 0.95)
        self.register_threshold("threshold", 1.0)
        self.register_state("mem", "adapt")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        spikes = round_st(sigmoid4x(mem - params.threshold - state.adapt))
        adapt = params.rho * state.adapt + (1 - params.rho) * spikes
        return spikes, state._replace(mem=mem - spikes * params.threshold, adapt=adapt)


def mlp():
    return nn.Sequential(
        nn.Linear(6, 8),
        tt.nn.LIB(8, quant_fn="round"),
        nn.Linear(8, 8),
        tt.nn.DSRLITS(8, quant_fn="round", pos_rec_weight=0.3, neg_rec_weight=-0.2),
        nn.Dropout(0.5),  # eval mode in the tests: identity
        nn.Linear(8, 5),
        ALIF(5),
        nn.Linear(5, 4),
        tt.nn.DSLI(4),
    )


def convnet():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        tt.nn.SLIB(4, dim=-3, quant_fn="round"),
        nn.BatchNorm2d(4),
        nn.AvgPool2d(2),
        tt.nn.DRLIT(4, dim=1, quant_fn="round"),  # a positive dim counts in the per-step input
        ALIF(4, dim=-3),
        nn.Flatten(),
        nn.Linear(16, 6),
        nn.ReLU(),
        tt.nn.LITS(6, quant_fn="round"),
    )


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def inputs(model_kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (T, B, 6) if model_kind == "mlp" else (T, B, 2, 4, 4)
    return (2 * torch.randn(shape, generator=g)).requires_grad_(True)


def states(model):
    return {k: [t.detach().clone() for t in v] for k, v in tt.state.get_states(model).items() if v is not None}


def loss_of(model, ys):
    extra = sum(t.sum() for v in tt.state.get_states(model).values() if v is not None for t in v)
    return (ys * torch.linspace(-1, 1, ys.shape[-1])).sum() + 0.5 * extra


def per_step(model, xs, detach_every=None):
    outs = []
    for t, x in enumerate(xs.unbind(0)):
        if detach_every and t and t % detach_every == 0:
            for _, layer in tt.state.named_layers(model):
                layer.detach_states()
        outs.append(model(x))
    return torch.stack(outs)


def grads(model, xs, ys):
    return torch.autograd.grad(loss_of(model, ys), [xs, *model.parameters()])


def assert_equal_runs(a_model, a_ys, a_grads, b_model, b_ys, b_grads):
    torch.testing.assert_close(a_ys, b_ys)
    sa, sb = states(a_model), states(b_model)
    assert sa.keys() == sb.keys()
    for k in sa:
        for x, y in zip(sa[k], sb[k]):
            torch.testing.assert_close(x, y)
    for x, y in zip(a_grads, b_grads):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("fast_mode", [False, True])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_run_equals_per_step(kind, fast_mode):
    model = randomize(mlp() if kind == "mlp" else convnet())
    ref = copy.deepcopy(model)
    xs = inputs(kind)
    steps = plan(model, xs)
    assert steps is not None and "neuron" in [k for k, _ in steps] and "fold" in [k for k, _ in steps]
    ys = run(model, xs, fast=fast_mode)
    ys_ref = per_step(ref, xs)
    assert_equal_runs(model, ys, grads(model, xs, ys), ref, ys_ref, grads(ref, xs, ys_ref))


def test_plan_kinds():
    model = convnet().eval()
    xs = inputs("conv")
    kinds = [k for k, _ in plan(model, xs)]
    assert kinds == ["fold", "neuron", "fold", "fold", "neuron", "neuron", "fold", "fold", "fold", "neuron"]
    model.train()  # BatchNorm in training: batch statistics per step, so it runs step by step
    assert [k for k, _ in plan(model, xs)][2] == "step"
    lif = tt.nn.LIB(6)
    assert plan(lif, inputs("mlp")) == [("neuron", lif)]


def test_hooked_modules_run_step_by_step_and_monitor_records():
    model = randomize(mlp())
    model_ref = copy.deepcopy(model)  # the same weights, run step by step
    xs = inputs("mlp").detach()
    with tt.monitor(model) as rec:
        kinds = [k for k, _ in plan(model, xs)]
        ys = run(model, xs)
    layer_positions = [i for i, m in enumerate(model) if isinstance(m, tt.TTLayer)]
    assert [kinds[i] for i in layer_positions] == ["step"] * len(layer_positions)
    assert kinds[0] == "fold"  # unhooked modules keep their fast kinds
    with tt.monitor(model_ref) as rec_ref:
        ys_ref = per_step(model_ref, xs)
    torch.testing.assert_close(ys, ys_ref)
    assert rec.outputs.keys() == rec_ref.outputs.keys() and len(rec.outputs) == len(layer_positions)
    for path in rec.outputs:
        assert rec.outputs[path].shape[0] == T
        torch.testing.assert_close(rec.outputs[path], rec_ref.outputs[path])
    # a forward hook on any module sees the per-step calls
    calls = []
    lin = model[0]
    handle = lin.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    assert plan(model, xs)[0] == ("step", lin)
    run(model, xs)
    handle.remove()
    assert calls == [xs.shape[1:]] * T
    # global module hooks: the whole model runs step by step
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        assert plan(model, xs) is None
    finally:
        handle.remove()
    assert plan(model, xs)[0] == ("fold", lin)


def test_batchnorm_in_training_matches():
    model = randomize(convnet()).train()
    ref = copy.deepcopy(model)
    xs = inputs("conv")
    ys, ys_ref = run(model, xs, fast=True), per_step(ref, xs)
    assert_equal_runs(model, ys, grads(model, xs, ys), ref, ys_ref, grads(ref, xs, ys_ref))
    torch.testing.assert_close(model[2].running_mean, ref[2].running_mean)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.lif = tt.nn.RLIB(6, quant_fn="round")

    def forward(self, x):
        return self.lif(self.fc(x)) + x


class Chain(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x)


class NotAChain(Chain):
    def forward(self, x):
        return self.net(x) * 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: Residual(),  # not a chain: whole model step by step
        lambda: nn.Sequential(nn.Linear(6, 6), Residual(), tt.nn.LIB(6, quant_fn="round")),  # a "step" element
        lambda: (lambda lif: nn.Sequential(nn.Linear(6, 6), lif, nn.Linear(6, 6), lif))(tt.nn.LIB(6, quant_fn="round")),
        lambda: Chain(),
        lambda: NotAChain(),
    ],
    ids=["residual", "step-element", "shared-layer", "ttmodel-chain", "ttmodel-other"],
)
def test_fallbacks_and_chains(make):
    model = randomize(make())
    ref = copy.deepcopy(model)
    xs = inputs("mlp")
    steps = plan(model, xs)
    if steps is None or any(kind == "step" for kind, _ in steps):  # fast=True insists on every path
        with pytest.raises(ValueError, match="fast=True cannot .* step by step"):
            run(model, xs, fast=True)
    ys = run(model, xs, fast=None if steps is None or any(kind == "step" for kind, _ in steps) else True)
    ys_ref = per_step(ref, xs)
    assert_equal_runs(model, ys, grads(model, xs, ys), ref, ys_ref, grads(ref, xs, ys_ref))


def test_what_is_a_chain():
    xs = inputs("mlp")
    assert plan(Residual(), xs) is None
    assert plan(NotAChain(), xs) is None
    assert [k for k, _ in plan(Chain(), xs)][:2] == ["fold", "neuron"]
    shared = tt.nn.LIB(6)
    assert plan(nn.Sequential(shared, nn.Linear(6, 6), shared), xs) is None
    hooked = nn.Sequential(nn.Linear(6, 6), tt.nn.LIB(6))
    hooked.register_forward_hook(lambda m, i, o: None)
    assert plan(hooked, xs) is None
    nested = nn.Sequential(nn.Sequential(nn.Linear(6, 6), tt.nn.LIB(6)), nn.Flatten(0))  # start_dim 0: per step
    assert [k for k, _ in plan(nested, xs)] == ["fold", "neuron", "step"]


def test_interleaving_per_step_and_sequence_calls():
    model = randomize(mlp())
    ref = copy.deepcopy(model)
    xs = inputs("mlp", seed=3)
    a = torch.cat(
        [torch.stack([model(x) for x in xs[:2].unbind(0)]), run(model, xs[2:6], fast=True), model(xs[6])[None]]
    )
    a = torch.cat([a, run(model, xs, fast=False)])
    b = torch.cat([per_step(ref, xs), per_step(ref, xs)])
    assert_equal_runs(model, a, grads(model, xs, a), ref, b, grads(ref, xs, b))


@pytest.mark.parametrize("fast_mode", [False, True])
def test_checkpoint_same_forward_and_gradients(fast_mode):
    model = randomize(mlp())
    ref = copy.deepcopy(model)
    xs = inputs("mlp")
    ys = run(model, xs, fast=fast_mode, checkpoint=3)
    ys_ref = run(ref, xs, fast=fast_mode)
    assert_equal_runs(model, ys, grads(model, xs, ys), ref, ys_ref, grads(ref, xs, ys_ref))


def test_checkpoint_replays_random_draws():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), tt.nn.LIB(8), nn.Linear(8, 4), tt.nn.DLIT(4))
    ref = copy.deepcopy(model)
    xs = inputs("mlp")
    torch.manual_seed(5)
    ys = run(model, xs, fast=True, checkpoint=4)  # bernoulli spikes and dropout masks
    torch.manual_seed(5)  # the same draws in the same order: the same two time chunks, not checkpointed
    ys_ref = torch.cat([run(ref, part, fast=True) for part in xs.split(4)])
    assert_equal_runs(model, ys, grads(model, xs, ys), ref, ys_ref, grads(ref, xs, ys_ref))


@pytest.mark.parametrize("k", [1, 3])
def test_detach_every_is_truncated_bptt(k):
    model = randomize(mlp())
    ref = copy.deepcopy(model)
    xs = inputs("mlp")
    ys = run(model, xs, fast=True, detach_every=k)
    ys_ref = per_step(ref, xs, detach_every=k)
    assert_equal_runs(model, ys, grads(model, xs, ys), ref, ys_ref, grads(ref, xs, ys_ref))
    # and the gradient really is truncated: it differs from full BPTT's
    w = torch.linspace(-1, 1, 4)
    a, b = copy.deepcopy(ref), copy.deepcopy(ref)
    g_trunc = torch.autograd.grad((run(a, xs, detach_every=k) * w).sum(), xs)[0]
    g_full = torch.autograd.grad((run(b, xs) * w).sum(), xs)[0]
    assert not torch.allclose(g_full, g_trunc)


def test_stateless_marks():
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    xs = inputs("mlp")
    model = nn.Sequential(Scale(), tt.nn.LIB(6))
    assert [k for k, _ in plan(model, xs)] == ["step", "neuron"]
    stateless(model[0])
    assert [k for k, _ in plan(model, xs)] == ["fold", "neuron"]

    class Shift(nn.Module):
        def forward(self, x):
            return x + 1

    register_stateless(Shift)
    assert [k for k, _ in plan(nn.Sequential(Shift()), xs)] == ["fold"]
    with pytest.raises(ValueError, match="neuron layers"):
        stateless(nn.Sequential(tt.nn.LIB(3)))
    with pytest.raises(ValueError, match="has state"):
        register_stateless(tt.nn.LIB)
    with pytest.raises(TypeError):
        register_stateless(len)


def test_errors():
    model = nn.Sequential(nn.Linear(6, 6), tt.nn.LIB(6))
    with pytest.raises(ValueError, match="leading time dimension"):
        run(model, 3.0)
    with pytest.raises(ValueError, match="at least one timestep"):
        run(model, torch.zeros(0, 2, 6))
    with pytest.raises(ValueError, match="checkpoint"):
        run(model, torch.zeros(3, 2, 6), checkpoint=0)
    with pytest.raises(ValueError, match="detach_every"):
        run(model, torch.zeros(3, 2, 6), detach_every=True)
    with pytest.raises(ValueError, match="num_neurons=6"):
        run(nn.Sequential(tt.nn.LIB(6)), torch.zeros(3, 2, 5))
    with pytest.raises(TypeError, match="nn.Module"):
        run(lambda x: x, torch.zeros(3, 2, 6))


@pytest.mark.slow
def test_compiled_sequence_mode():
    """The kernel path in sequence mode, float32."""
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        lib = [tt.nn.LIB(3, quant_fn="round") for _ in range(2)]
        model = nn.Sequential(nn.Linear(6, 3), lib[0], nn.Linear(3, 3), lib[1])
        ref = copy.deepcopy(model)
        xs = torch.randn(5, 2, 6, requires_grad=True)
        ys = run(model, xs, fast=True)
        ys_ref = per_step(ref, xs)
        torch.testing.assert_close(ys, ys_ref)
        for a, b in zip(grads(model, xs, ys), grads(ref, xs, ys_ref)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_default_dtype(old)
