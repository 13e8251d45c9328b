"""A use of the public API that a static type checker must accept (CI: mypy on this file).

Not a test module (pytest does not collect it: the name has no ``test_`` prefix); it is also
executed by ``tests/test_typing.py``, so it has to run, not only type-check.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import tracetorch as tt
from tracetorch import snn
from tracetorch.functional import lib_step, scan

F = tt.functional


def functional_api() -> Tensor:
    params = F.init_params("LIB", 8, beta=0.9, threshold_rank=0)
    x: Tensor = torch.rand(4, 8)
    state = F.init_state("LIB", x)
    y, state = lib_step(params, state, x, quant_fn="round")
    ys, state = scan(F.dsrlits_step, F.init_params("DSRLITS", 8), F.init_state("DSRLITS", x), torch.rand(5, 4, 8))
    step = F.get_step("SLIB")
    y2, _ = step(F.init_params("SLIB", 8), F.init_state("SLIB", x), x)
    assert F.STEPS["lib_step"] is F.lib_step and len(F.NAMES) == 52
    ya, _ = F.dsralits_step(F.init_params("DSRALITS", 8), F.init_state("DSRALITS", x), x, reset="zero")
    decay: Tensor = F.halflife_to_decay(10.0)
    return y + ys.sum(0) + y2 + ya + decay


class Net(tt.TTModel):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.lif: tt.nn.LIB = tt.nn.LIB(8, beta=0.8, threshold=torch.ones(8), quant_fn="round", spike_fn=F.Atan())
        self.readout = snn.DSRLITS(8, pos_scale=2.0, learn_pos_scale=False, dim=-1)
        self.adaptive: tt.nn.ALIB = tt.nn.ALIB(8, rho=0.9, adapt_gain=0.5, learn_rho=False, reset="zero")

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.adaptive(self.lif(self.fc(x))))


def object_api() -> Tensor:
    model = Net()
    xs = torch.rand(5, 3, 6)
    ys: Tensor = model.run(xs)
    model.detach_states()
    beta: Tensor = model.lif.beta
    mem: Tensor | None = model.lif.mem
    flat: dict[str, Tensor] = model.save_states()
    model.zero_states()
    model.load_states(flat)
    cls: type[tt.nn.NeuronLayer] = tt.nn.LAYERS["SRLIB"]
    layer = cls(8)
    tt.state.zero_states(nn.Sequential(layer))
    with tt.monitor(model) as rec:
        model(xs[0])
    membranes: dict[str, Tensor] = rec.membranes
    out, states = tt.functional_call(model, None, None, xs[0])
    adapt: Tensor | None = model.adaptive.adapt
    reset: str = model.adaptive.reset
    assert mem is not None and beta.shape == (8,) and membranes and states and adapt is not None and reset == "zero"
    return ys.sum() + out.sum() + tt.nn.run(nn.Sequential(tt.nn.LI(6)), xs).sum()


def ecosystem() -> float:
    spikes = tt.encode.rate(torch.rand(4, 10), 12, generator=torch.Generator().manual_seed(0))
    loss = tt.loss.count_cross_entropy(spikes, torch.zeros(4, dtype=torch.long))
    return float(loss) + tt.loss.accuracy(spikes, torch.zeros(4, dtype=torch.long))


if __name__ == "__main__":
    functional_api()
    object_api()
    ecosystem()
