"""DistributedDataParallel (gloo, CPU, 2 processes) trains a TTModel with the same gradients as one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tracetorch as tt

STEPS, T, BATCH = 3, 4, 8


class Net(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 8), tt.nn.SRLIB(8, rec_weight=0.2, quant_fn="round"), nn.Linear(8, 3), tt.nn.LI(3)
        )

    def forward(self, x):
        return self.net(x)


def data():
    g = torch.Generator().manual_seed(0)
    return 2 * torch.rand(STEPS, T, BATCH, 5, generator=g), torch.randint(0, 3, (STEPS, BATCH), generator=g)


def train(model, xs, ys, sync=None):
    """Train STEPS steps with SGD; returns every step's gradients (after DDP's all-reduce)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for step in range(STEPS):
        tt_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        tt_model.zero_states()
        opt.zero_grad()
        out = sum(model(x) for x in xs[step])
        nn.functional.cross_entropy(out, ys[step]).backward()
        grads.append({k: p.grad.clone() for k, p in tt_model.named_parameters()})
        opt.step()
    return grads


def worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(Net())
        xs, ys = data()
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        grads = train(model, xs[:, :, shard], ys[:, shard])
        if rank == 0:
            torch.save(grads, path)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path):
    path = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(2, free_port(), path), nprocs=2, join=True)
    ddp_grads = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    xs, ys = data()
    single = train(Net(), xs, ys)
    assert len(ddp_grads) == STEPS
    for a, b in zip(ddp_grads, single):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
