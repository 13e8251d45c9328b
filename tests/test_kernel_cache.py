"""The kernel cache as a hostile machine would try it, and the kernels beside fork and threads.

A built kernel is native code loaded into the process: a library planted where the cache looks,
or a damaged one, must never be loaded; a directory that cannot be used must not break a call;
a child made by fork must finish its kernel calls. Fork and umask cases run in a subprocess with
a timeout, so a hang fails the test instead of blocking the run.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch

import tracetorch as tt
import tracetorch.functional as F
from tracetorch.functional import kernels
from tracetorch.functional.kernels import cache, cpu, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = shutil.which(os.environ.get("TRACETORCH_CC") or os.environ.get("CC") or "cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE* f = fopen(MARK, "w");
    if (f) { fputs("planted code ran", f); fclose(f); }
}
void tt_forward(void) {}
void tt_backward(void) {}
"""


def _python(code, env=None, timeout=120):
    """Run ``code`` in a fresh interpreter (the repo on its path); the completed process."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )


def _lib_call(fast=True, name="LIB", quant="round", dtype=torch.float64):
    spec = F.SPECS[name]
    g = torch.Generator().manual_seed(3)
    params = F.init_params(name, 5, dtype=dtype)
    state = F.init_state(name, torch.zeros(2, 5, dtype=dtype))
    xs = 1.5 * torch.randn(6, 2, 5, generator=g, dtype=dtype)
    kw = {"quant_fn": quant} if spec.fires else {}
    return F.scan(F.get_step(name), params, state, xs, fast=fast, **kw)


def _source(name="LIB", quant="round", real="double", part="forward"):
    """The C source of one of the two libraries of a kernel (the forward's, loaded first, by default)."""
    tag = kernels.spike_tag(F.sigmoid4x)  # what scan passes, for the LI family too
    return ops.get_kernel(name, tag, quant if F.SPECS[name].fires else "none").source(real, part)


def _plant(where, mark, uid=None):
    """Plant a library with a constructor under the name the LIB kernel is looked up by, with a
    record that matches it (whoever can write the directory can write both)."""
    where.mkdir(parents=True, exist_ok=True)
    lib = where / cpu.library_name(_source())
    src = where.parent / "planted.c"
    src.write_text(PLANTED)
    subprocess.run([CC, "-shared", "-fPIC", f'-DMARK="{mark}"', str(src), "-o", str(lib)], check=True)
    data = lib.read_bytes()
    lib.with_suffix(".json").write_text(json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
    if uid is not None:
        for p in (where, lib, lib.with_suffix(".json")):
            os.chown(p, uid, uid)
    return lib


@pytest.fixture
def fresh(monkeypatch):
    """Nothing traced or loaded in this process's memory, before and after."""
    kernels.clear_cache()
    yield monkeypatch
    kernels.clear_cache()


def _assert_refused_and_correct(where, mark, fresh):
    ref = _lib_call(fast=False)
    with pytest.warns(RuntimeWarning, match="kernel cache directory") as rec:
        out = _lib_call(fast=True)
    assert not mark.exists(), "the planted library was loaded"
    torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-10)
    text = str(rec[0].message)
    assert str(where) in text and "private temporary directory" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process and directory
        kernels.clear_cache()
        _lib_call(fast=True)


@needs_cc
def test_planted_library_in_a_world_writable_directory_is_never_loaded(tmp_path, fresh):
    shared = tmp_path / "shared"
    mark = tmp_path / "mark"
    _plant(shared, mark)
    os.chmod(shared, 0o1777)  # like /tmp: sticky, everybody may write
    fresh.setenv("TRACETORCH_CACHE_DIR", str(shared))
    _assert_refused_and_correct(shared, mark, fresh)


@needs_cc
def test_planted_library_in_a_directory_another_user_owns_is_never_loaded(tmp_path, fresh):
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user here")
    other = 4321 if os.geteuid() != 4321 else 4322
    mark = tmp_path / "mark"
    where = tmp_path / "xdg" / "tracetorch"
    _plant(where, mark, uid=other)
    fresh.delenv("TRACETORCH_CACHE_DIR", raising=False)
    fresh.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _assert_refused_and_correct(where, mark, fresh)


@needs_cc
def test_planted_file_in_our_own_directory_is_rebuilt_not_loaded(tmp_path, fresh):
    """A file another user owns (or one we own that others can write) inside a private directory."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user here")
    mark = tmp_path / "mark"
    where = tmp_path / "mine"
    lib = _plant(where, mark)
    os.chmod(where, 0o700)
    os.chown(lib, 4321, 4321)
    fresh.setenv("TRACETORCH_CACHE_DIR", str(where))
    ref = _lib_call(fast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _lib_call(fast=True)
    assert not mark.exists()
    torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-10)
    assert lib.stat().st_uid == os.geteuid() and cache.open_entry(lib) is not None  # rebuilt in its place


BAD_ENTRIES = {
    "LIB": "truncated",
    "LIT": "garbage",
    "LI": "empty",
    "SLIB": "foreign",
}


@needs_cc
def test_bad_cache_entries_are_rebuilt_with_correct_results(tmp_path, fresh):
    """Truncated (SIGBUS before), garbage, empty, another valid library: rebuilt, no crash."""
    where = tmp_path / "cache"
    fresh.setenv("TRACETORCH_CACHE_DIR", str(where))
    where.mkdir(mode=0o700)
    mark = tmp_path / "mark"
    foreign = tmp_path / "foreign.so"
    (tmp_path / "foreign.c").write_text(PLANTED)
    subprocess.run([CC, "-shared", "-fPIC", f'-DMARK="{mark}"', str(tmp_path / "foreign.c"), "-o", str(foreign)])
    libs = {}
    for name, how in BAD_ENTRIES.items():
        lib = libs[name] = where / cpu.library_name(_source(name))
        cpu._build(cpu.compiler(), _source(name), lib)  # built, never loaded in this process
        data = lib.read_bytes()
        bad = {
            "truncated": data[: len(data) // 2],
            "garbage": os.urandom(len(data)),
            "empty": b"",
            "foreign": foreign.read_bytes(),
        }[how]
        lib.write_bytes(bad)
    code = f"""
        import torch, tracetorch.functional as F
        torch.manual_seed(0)
        for name in {list(BAD_ENTRIES)!r}:
            spec = F.SPECS[name]
            d = torch.float64  # the entries spoiled above are the float64 kernels
            p = F.init_params(name, 5, dtype=d)
            s = F.init_state(name, torch.zeros(2, 5, dtype=d))
            xs = torch.randn(6, 2, 5, dtype=d)
            kw = dict(quant_fn="round") if spec.fires else dict()
            a = F.scan(F.get_step(name), p, s, xs, fast=True, **kw)[0]
            b = F.scan(F.get_step(name), p, s, xs, fast=False, **kw)[0]
            torch.testing.assert_close(a, b)
        print("ok")
    """
    out = _python(code, {"TRACETORCH_CACHE_DIR": str(where)})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
    assert not mark.exists()
    for lib in libs.values():
        assert cache.open_entry(lib) is not None


@needs_cc
def test_unusable_directories_fall_back_with_one_warning(tmp_path, fresh):
    ref = _lib_call(fast=False)
    (tmp_path / "file").write_text("not a directory")
    under_file = tmp_path / "file" / "cache"
    fresh.setenv("TRACETORCH_CACHE_DIR", str(under_file))
    with pytest.warns(RuntimeWarning, match="not used") as rec:
        out = _lib_call(fast=True)  # fast=True too: it runs, in the fallback directory
    assert str(under_file) in str(rec[0].message)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-10)


@needs_cc
def test_read_only_directory_falls_back_with_one_warning(tmp_path, fresh):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o700)
    immutable = False
    if os.geteuid() == 0:  # root writes through mode bits; an immutable directory stops it
        immutable = subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("root here can neither be stopped by mode bits nor set the immutable attribute")
    else:
        os.chmod(ro, 0o500)
    try:
        fresh.setenv("TRACETORCH_CACHE_DIR", str(ro))
        ref = _lib_call(fast=False)
        with pytest.warns(RuntimeWarning, match="not writable") as rec:
            out = _lib_call(fast=True)
        assert str(ro) in str(rec[0].message)
        torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-10)
        assert not list(ro.iterdir())
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(ro)])
        os.chmod(ro, 0o700)


@needs_cc
def test_umask_000_still_makes_private_directories_and_files(tmp_path):
    where = tmp_path / "a" / "b" / "cache"
    code = """
        import os, torch, tracetorch.functional as F
        os.umask(0)
        p = F.init_params('LIB', 4); s = F.init_state('LIB', torch.zeros(2, 4))
        F.scan(F.lib_step, p, s, torch.randn(3, 2, 4), fast=True)
    """
    out = _python(code, {"TRACETORCH_CACHE_DIR": str(where)})
    assert out.returncode == 0, out.stderr[-3000:]
    for d in (tmp_path / "a", tmp_path / "a" / "b", where):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = list(where.iterdir())
    assert sorted(p.suffix for p in files) == [".json", ".json", ".so", ".so"]  # forward and backward
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@needs_cc
def test_failing_compiler_error_is_in_the_warning(tmp_path, fresh):
    fake = tmp_path / "cc"
    fake.write_text(f'#!/bin/sh\nexec {CC} --sysroot=/nonexistent "$@"\n')  # no system headers: no math.h
    fake.chmod(0o755)
    fresh.setenv("TRACETORCH_CC", str(fake))
    fresh.setenv("TRACETORCH_CACHE_DIR", str(tmp_path / "cache"))
    kernels.clear_cache()
    ref = _lib_call(fast=False)
    with pytest.warns(RuntimeWarning) as rec:
        out = _lib_call(fast=None)
    text = "\n".join(str(w.message) for w in rec)
    assert "math.h" in text and "No such file" in text, text  # the compiler's own words
    torch.testing.assert_close(out[0], ref[0])
    with pytest.raises(ValueError, match="math.h"):
        _lib_call(fast=True)


# ---- fork -----------------------------------------------------------------------------------------

_WAIT_CHILD = """
    def wait(pid, seconds=60):
        import time
        end = time.time() + seconds
        while time.time() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "hung"
"""


@needs_cc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_fork_while_another_thread_builds(tmp_path):
    code = textwrap.dedent(_WAIT_CHILD) + textwrap.dedent("""
        import os, sys, threading, time, torch
        import tracetorch.functional as F
        from tracetorch.functional.kernels import cpu
        parent = os.getpid()
        real = cpu._compile
        def slow(*args):
            if os.getpid() == parent:
                time.sleep(2)  # the build lock is held meanwhile
            return real(*args)
        cpu._compile = slow
        p = F.init_params('LIB', 4); s = F.init_state('LIB', torch.zeros(2, 4)); xs = torch.randn(5, 2, 4)
        ref = F.scan(F.lib_step, p, s, xs, quant_fn='round', fast=False)[0]
        t = threading.Thread(target=F.scan, args=(F.lib_step, p, s, xs), kwargs=dict(quant_fn='round', fast=True))
        t.start()
        while not any(lock.locked() for lock in list(cpu._BUILDING.values())):  # a build holds its lock
            time.sleep(0.005)
        pid = os.fork()
        if pid == 0:
            ys = F.scan(F.lib_step, p, s, xs, quant_fn='round', fast=True)[0]
            os._exit(0 if torch.allclose(ys, ref) else 3)
        t.join()
        print("child:", wait(pid))
    """)
    out = _python(code, {"TRACETORCH_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0 and "child: 0" in out.stdout, out.stdout + out.stderr[-3000:]


@needs_cc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_fork_after_the_kernels_ran_on_two_openmp_threads(tmp_path):
    code = textwrap.dedent(_WAIT_CHILD) + textwrap.dedent("""
        import multiprocessing, numpy, os, torch
        import tracetorch.functional as F
        from tracetorch.functional.kernels import cpu
        torch.set_num_threads(2)
        S = 8192
        p = F.init_params('LIB', S); s = F.init_state('LIB', torch.zeros(S)); xs = torch.randn(16, S)
        assert cpu.threads_for(16, S, "float") == 2
        ref = F.scan(F.lib_step, p, s, xs, quant_fn='round', fast=False)[0]
        ys = F.scan(F.lib_step, p, s, xs, quant_fn='round', fast=True)[0]  # libgomp's pool now exists

        def child_call(_=None):
            # compared with numpy: torch's own parallel ops hang in such a child too (docs/kernels.md)
            ys = F.scan(F.lib_step, p, s, xs, quant_fn='round', fast=True)[0]
            return bool(numpy.allclose(ys.numpy(), ref.numpy(), rtol=1.3e-6, atol=1e-5))

        pid = os.fork()
        if pid == 0:
            os._exit(0 if child_call() else 3)
        print("fork child:", wait(pid))
        with multiprocessing.get_context("fork").Pool(1) as pool:
            r = pool.map_async(child_call, [0])
            print("pool child:", r.get(timeout=60))
    """)
    out = _python(code, {"TRACETORCH_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "fork child: 0" in out.stdout and "pool child: [True]" in out.stdout, out.stdout


# ---- per-call path selection ------------------------------------------------------------------------


def test_per_step_call_beside_a_thread_running_torch_compile(fresh):
    """Another thread compiling must not change this thread's path (the compile flag is global)."""
    fresh.setattr(kernels.config, "step_min_elements", 1)
    calls = []
    real = ops.kernel_scan

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    fresh.setattr(kernels, "kernel_scan", spy)
    layer = tt.nn.LIB(5, quant_fn="round").double()
    xs = torch.randn(40, 3, 5, dtype=torch.float64)

    def steps(seen=None):
        layer.zero_states()
        calls.clear()
        out = []
        for x in xs.unbind(0):
            if seen is not None:
                seen.append(torch.compiler.is_compiling())
            out.append(layer(x))
        return torch.stack(out), len(calls)

    solo, n_solo = steps()
    assert n_solo == len(xs)
    stop = threading.Event()
    one = torch.ones(3)

    def compiling():
        k = 0
        while not stop.is_set():
            k += 1
            torch.compile(lambda x, k=k: torch.sin(x) * k + x.cos(), backend="eager", dynamic=False)(one)

    thread = threading.Thread(target=compiling, daemon=True)
    seen = []
    thread.start()
    try:
        for _ in range(200):
            beside, n = steps(seen)
            assert n == len(xs), "a per-step call switched path while another thread compiled"
            assert torch.equal(beside, solo)
            if sum(seen) >= 5:
                break
    finally:
        stop.set()
        thread.join(timeout=60)
    assert sum(seen) >= 5, "the calls never overlapped a compile"
