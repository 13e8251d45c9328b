"""Train the digits SNN on several processes with DistributedDataParallel (DDP).

Launch it with torchrun, one process per CPU core group or per GPU:

    torchrun --standalone --nproc_per_node=2 examples/ddp_digits.py
    torchrun --standalone --nproc_per_node=4 examples/ddp_digits.py --epochs 10   # 4 GPUs: NCCL

Each process holds a full copy of the model and trains on its own shard of every batch; DDP
averages the gradients across processes in the backward, so every copy takes the same optimizer
step and the copies stay identical. The backend is NCCL when CUDA is available (each process on
its own GPU, ``LOCAL_RANK``) and gloo on CPU. Run without torchrun it trains in one process.

The model's ``forward`` takes the whole ``[T, B, 64]`` spike train and runs it in sequence mode
(``tt.nn.run``): DDP must see one ``forward`` per optimizer step to synchronise the gradients, so
the time loop lives inside it. Hidden states live in the layers, not in the parameters, so DDP
neither broadcasts nor averages them: each process zeroes its own at the start of a sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import tracetorch as tt

from digits_data import load_digits_tensors  # examples/digits_data.py


class SequenceSNN(tt.TTModel):
    """``Linear -> LIB -> Linear -> LIB``; ``forward`` takes a whole sequence ``[T, B, 64]``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), tt.nn.LIB(hidden, quant_fn="round"), nn.Linear(hidden, 10), tt.nn.LIB(10, quant_fn="round")
        )

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        self.zero_states()  # every sequence starts from rest
        return tt.nn.run(self.net, xs)


def setup() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; joins the process group when launched by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cpu")
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def main(argv: list[str] | None = None) -> dict:
    """Train and evaluate; returns ``{"accuracy", "world_size", "in_sync", "samples", "seconds"}`` (on every rank)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),  # the summary, without the markup
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--timesteps", type=int, default=16, help="rate-coding window T")
    parser.add_argument("--hidden", type=int, default=128, help="hidden neurons")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size, split across the processes")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data split and spikes")
    parser.add_argument("--result", type=Path, default=None, help="rank 0 writes the results there as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rank, world, device = setup()
    try:
        torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
        x_train, y_train, x_test, y_test = load_digits_tensors(args.seed)
        model = SequenceSNN(args.hidden).to(device)
        ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
        gen = torch.Generator().manual_seed(args.seed + 1000 * rank)  # each process its own input spikes
        order = torch.Generator().manual_seed(args.seed)  # the same batch order on every process
        samples = 0
        start = time.perf_counter()
        for epoch in range(args.epochs):
            for idx in torch.randperm(len(x_train), generator=order).split(args.batch_size):
                mine = idx[rank::world]  # this process's shard of the global batch
                if len(mine) == 0:
                    continue
                xs = tt.encode.rate(x_train[mine], args.timesteps, generator=gen).to(device)
                loss = tt.loss.count_cross_entropy(ddp(xs), y_train[mine].to(device))
                opt.zero_grad()
                loss.backward()  # DDP averages the gradients across the processes here
                opt.step()
                samples += len(mine)
            if rank == 0:
                print(f"epoch {epoch + 1}: loss {loss.item():.3f}")
        seconds = time.perf_counter() - start

        # evaluate: each process scores its shard of the test set, the counts are summed
        model.eval()
        with torch.no_grad():
            mine = torch.arange(rank, len(x_test), world)
            out = model(tt.encode.rate(x_test[mine], args.timesteps, generator=gen).to(device))
            counts = torch.tensor(
                [float((out.sum(0).argmax(-1).cpu() == y_test[mine]).sum()), float(len(mine))], device=device
            )
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            if world > 1:
                dist.all_reduce(counts)
                gathered = [torch.empty_like(flat) for _ in range(world)]
                dist.all_gather(gathered, flat)
                in_sync = all(torch.equal(g, flat) for g in gathered)
            else:
                in_sync = True
        accuracy = float(counts[0] / counts[1])
        result = {"accuracy": accuracy, "world_size": world, "in_sync": in_sync, "samples": samples, "seconds": seconds}
        if rank == 0:
            print(f"test accuracy {accuracy:.4f} with {world} process(es), {seconds:.1f} s; copies identical: {in_sync}")
            if args.result is not None:
                args.result.write_text(json.dumps(result))
        if world > 1:
            dist.barrier()  # nobody tears the group down while another process still talks to it
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
