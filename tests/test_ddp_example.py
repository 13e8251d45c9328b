"""examples/ddp_digits.py launched by torchrun with two processes (gloo on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow  # two fresh interpreters and a rendezvous
def test_ddp_digits_two_processes(tmp_path):
    result = tmp_path / "result.json"
    args = ["--epochs", "1", "--timesteps", "4", "--hidden", "16", "--batch-size", "128", "--result", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "examples" / "ddp_digits.py"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(result.read_text())
    assert out["world_size"] == 2 and out["in_sync"]  # DDP kept the two copies identical
    assert 0.0 <= out["accuracy"] <= 1.0
    assert 700 <= out["samples"] <= 720  # rank 0's half of the 1437 training digits
    assert "with 2 process(es)" in proc.stdout


def test_ddp_digits_single_process(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from tests.test_examples import load_example

        result = load_example("ddp_digits").main(["--epochs", "1", "--timesteps", "3", "--hidden", "8"])
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert result["world_size"] == 1 and result["in_sync"] and result["samples"] == 1437
