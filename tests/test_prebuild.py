"""Kernel prebuild: a layer starts building its likely kernel in the background when it is created
(or moved to another dtype); the first call waits for that build, never runs the plain loop
while it builds, and a failed build is reported as a build on first use is."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import tracetorch as tt
from tracetorch.functional import kernels
from tracetorch.functional.kernels import cpu, ops

N = 8


@pytest.fixture
def prebuild(monkeypatch, tmp_path_factory):
    """Prebuild on (the suite turns it off), a fresh process-level kernel registry, one shared disk cache,
    and a record of every library load with an artificial 0.2 s delay (a slow compiler)."""
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "prebuild-cache"))
    monkeypatch.setattr(kernels.config, "prebuild", True)
    monkeypatch.setattr(kernels.config, "auto", True)
    kernels.clear_cache()
    loads: list[str] = []
    real_load = cpu.load

    def slow_load(source):
        loads.append(threading.current_thread().name)
        time.sleep(0.2)
        return real_load(source)

    monkeypatch.setattr(cpu, "load", slow_load)
    calls = {"kernel": 0}
    real_scan = kernels.kernel_scan

    def counting_scan(*args, **kw):
        calls["kernel"] += 1
        return real_scan(*args, **kw)

    monkeypatch.setattr(kernels, "kernel_scan", counting_scan)
    yield loads, calls
    for k in _lib_kernel()._pending.values():  # let a build still running end before the next test
        k.exception()
    kernels.clear_cache()


def _lib_kernel(real=None):
    return ops.get_kernel("LIB", kernels.spike_tag(tt.functional.sigmoid4x), "round")


def _plain(layer, xs):
    layer.zero_states()
    ys = tt.nn.run(layer, xs, fast=False)
    layer.zero_states()
    return ys


def test_a_new_layer_starts_both_builds_and_its_first_call_waits_for_them(prebuild):
    loads, calls = prebuild
    layer = tt.nn.LIB(N, quant_fn="round")
    k = _lib_kernel()
    assert sorted(k._pending) == [("float", "backward"), ("float", "forward")]
    xs = torch.randn(6, 3, N, requires_grad=True)
    ref = _plain(layer, xs)
    # the first call comes while the (slow) builds run: it waits and takes the kernel, every call after it too
    for _ in range(3):
        layer.zero_states()
        ys = tt.nn.run(layer, xs)
        ys.sum().backward()
        torch.testing.assert_close(ys, ref)
    assert calls["kernel"] == 3
    assert sorted(k._libs) == [("float", "backward"), ("float", "forward")] and not k._pending
    # built once each, forward and backward, both in background threads (at the same time)
    assert loads == ["tracetorch-kernel-build"] * 2


def test_a_per_step_call_waits_for_the_build_too(prebuild, monkeypatch):
    loads, calls = prebuild
    monkeypatch.setattr(kernels.config, "step_min_elements", 1)
    layer = tt.nn.LIB(N, quant_fn="round")
    x = torch.randn(3, N)
    ys = [layer(x) for _ in range(3)]  # every step through the one-step kernel, from the first
    assert calls["kernel"] == 3 and len(loads) == 2
    layer.zero_states()
    monkeypatch.setattr(kernels.config, "auto", False)
    for y in ys:
        torch.testing.assert_close(layer(x), y)


def test_moving_a_layer_to_float64_prebuilds_that_dtype(prebuild):
    loads, _ = prebuild
    layer = tt.nn.LIB(N, quant_fn="round")
    layer.double()
    k = _lib_kernel()
    assert {real for real, _ in [*k._pending, *k._libs]} == {"float", "double"}
    xs = torch.randn(4, 2, N, dtype=torch.float64)
    torch.testing.assert_close(tt.nn.run(layer, xs), _plain(layer, xs))
    assert len(loads) == 4  # float and double, forward and backward: nothing built twice


def test_a_failed_background_build_warns_at_the_first_call_and_the_plain_loop_runs(prebuild, monkeypatch):
    loads, calls = prebuild
    seen: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))

    def failing_load(source):
        loads.append("failed")
        time.sleep(0.1)
        raise cpu.BuildError("building a tracetorch kernel with cc failed: boom")

    monkeypatch.setattr(cpu, "load", failing_load)
    layer = tt.nn.LIB(N, quant_fn="round")
    xs = torch.randn(5, 2, N)
    ref = _plain(layer, xs)
    with pytest.warns(RuntimeWarning, match="boom"):
        ys = tt.nn.run(layer, xs)
    torch.testing.assert_close(ys, ref)  # the plain loop, whole
    with pytest.raises(ValueError, match="boom"):
        layer.zero_states()
        tt.nn.run(layer, xs, fast=True)
    assert not seen  # nothing escaped from the background thread


def test_a_build_pending_in_a_parent_process_is_not_waited_for(prebuild):
    loads, _ = prebuild
    tt.nn.LIB(N, quant_fn="round")
    k = _lib_kernel()
    for fut in k._pending.values():
        fut.exception()  # let it finish, then pretend it belongs to another process (a fork's parent)
        fut.pid = -1
    k._libs.clear()
    k.lib("float")
    assert len(loads) == 4  # built again here, not taken from the foreign future


def test_prebuild_off_builds_nothing(prebuild, monkeypatch):
    loads, _ = prebuild
    monkeypatch.setattr(kernels.config, "prebuild", False)
    layer = tt.nn.LIB(N, quant_fn="round").double()
    layer.quant_fn = "bernoulli"
    assert kernels.prebuild(layer.spec, layer.spike_fn, "round", torch.float32) is False
    assert ops.get_kernel.cache_info().currsize == 0 and loads == []
    monkeypatch.setattr(kernels.config, "prebuild", True)
    # and nothing for what the kernels do not serve: a custom spike function or dtype
    assert kernels.prebuild(layer.spec, lambda v: torch.sigmoid(v), "round", torch.float32) is False
    assert kernels.prebuild(layer.spec, layer.spike_fn, "round", torch.float16) is False
    assert loads == []


def test_tracetorch_prebuild_0_turns_it_off(tmp_path):
    code = (
        "import tracetorch as tt\n"
        "from tracetorch.functional import kernels\n"
        "assert kernels.config.prebuild is False\n"
        "tt.nn.LIB(4)\n"
        "assert kernels.get_kernel.cache_info().currsize == 0\n"
    )
    env = {**os.environ, "TRACETORCH_PREBUILD": "0", "TRACETORCH_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_during_a_build_builds_its_own(prebuild, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path))  # an empty cache: real builds
    real_build = cpu._build

    def slow_build(*args):  # inside the library's build lock
        time.sleep(0.5)
        real_build(*args)

    monkeypatch.setattr(cpu, "_build", slow_build)
    layer = tt.nn.LIB(N, quant_fn="round")
    time.sleep(0.4)  # both builds are inside their locks now
    pid = os.fork()
    if pid == 0:  # the child: the parent's build threads are not here; it must not wait for them
        code = 1
        try:
            xs = torch.randn(4, 2, N)
            torch.testing.assert_close(tt.nn.run(layer, xs), _plain(layer, xs))
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its parent's build")
    assert os.waitstatus_to_exitcode(status) == 0
