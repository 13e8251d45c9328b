"""tracetorch against snnTorch, Norse, SpikingJelly and traceTorch 0.15, side by side in one process.

Workloads (issue 6):

* W1: a training step (forward + backward) of Linear(784,H) -> LIF -> Linear(H,H) -> LIF ->
  Linear(H,10), Bernoulli input, cross-entropy on the readout summed over time; small
  (T=50, B=64, H=512) and large (T=200, B=32, H=1024).
* W2: one LIF layer alone, T=100, B=64, N=4096: forward + backward, and forward only (inference).

Every variant runs once per round, rounds interleaved, after warm-up; the table gives the median
with min-max, the paired ratio (median over rounds of variant / reference in the same round) and
the peak memory of one step (peak RSS above the RSS before it, in a separate pass after all the
timing, with malloc set to return freed memory at once). The floors are measured on this machine: the GEMMs alone on
T*B rows, and the neuron traffic (bytes per neuron-step) at the memory bandwidth of a large copy.

Run ``python benchmarks/bench.py`` (full) or ``--quick`` (small sizes, three rounds). See README.md.

``--allocator all`` (or a comma-separated list of ``default``, ``glibc-tuned``, ``thp``,
``jemalloc``, ``tcmalloc``) re-runs the timed workloads in fresh processes with each allocator's
environment set (``GLIBC_TUNABLES``, ``THP_MEM_ALLOC_ENABLE=1``, ``LD_PRELOAD``; malloc settings
must be in place when the process starts) and prints one table of them; see the docs page
"Performance on the CPU".
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tracetorch as tt  # noqa: E402
import tracetorch.functional as F  # noqa: E402
from tracetorch.nn.sequence import run as tt_run  # noqa: E402

warnings.filterwarnings("ignore")
LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

DIFFERENCES = """\
Semantic differences (everything else matched: decay 0.9, threshold 1, subtractive reset, a
sigmoid(4v) surrogate where the library has one, deterministic Heaviside spikes):
- tracetorch, traceTorch 0.15: s = round(sigmoid(4 (mem - 1))) (fires on mem > 1), reset in the same step.
- snnTorch Leaky: reset_delay=False set (its default applies the reset one step late); fires on mem > 1.
- Norse LIFBoxCell: box LIF v += dt*tau_inv*(-v + i): decay 0.9 means input gain 0.1, not 1;
  reset_subtract set (its default resets hard to v_reset); SuperSpike surrogate (no sigmoid option).
- SpikingJelly LIFNode(tau=10, decay_input=False, v_reset=None): decay 0.9, gain 1, soft reset;
  fires on mem >= 1; multi-step mode (its own time loop over a [T, B, N] tensor).
"""


# ---- machine helpers ----------------------------------------------------------------------------


def set_malloc(mode: str) -> None:
    """``tuned``: keep freed memory in the heap (no page faults on reuse); ``eager``: return it at once;
    ``default``: leave glibc as it starts."""
    if LIBC is None:
        return
    if mode == "tuned":
        LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        LIBC.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    elif mode == "eager":
        LIBC.mallopt(M_MMAP_THRESHOLD, 64 << 10)
        LIBC.mallopt(M_TRIM_THRESHOLD, 0)


def rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb(step: Callable[[], None]) -> float:
    """Peak RSS during one ``step`` above the RSS before it (Linux; resets the high-water mark)."""
    if LIBC is None or not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    gc.collect()
    LIBC.malloc_trim(0)
    before = rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return rss_mb("VmHWM") - before


def bandwidth_gbs() -> float:
    """Memory bandwidth of a 256 MB copy (read + write), best of 7."""
    a = torch.rand(64 << 20)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_time(lambda: b.copy_(a)) for _ in range(7))
    return 2 * a.numel() * 4 / best / 1e9


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- traceTorch 0.15 under another name -----------------------------------------------------------


def load_tt015() -> object | None:
    """traceTorch 0.15 as module ``tracetorch015`` (its wheel, unpacked in a temp dir; imports are relative)."""
    cache = Path(tempfile.gettempdir()) / "tracetorch015_wheel"
    pkg = cache / "tracetorch"
    if not pkg.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), "tracetorch==0.15.0"]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
        wheels = list(cache.glob("tracetorch-0.15.0*.whl"))
        if not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(cache)
    spec = importlib.util.spec_from_file_location(
        "tracetorch015", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["tracetorch015"] = module
    spec.loader.exec_module(module)
    return module


# ---- W1 -----------------------------------------------------------------------------------------


def w1_variants(T: int, B: int, H: int, tt015) -> tuple[dict[str, Callable[[], None]], dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(T, B, 784, generator=g) < 0.2).float()
    labels = torch.randint(0, 10, (B,), generator=g)
    v: dict[str, Callable[[], None]] = {}

    def tt_model():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(784, H),
            tt.nn.LIB(H, quant_fn="round"),
            nn.Linear(H, H),
            tt.nn.LIB(H, quant_fn="round"),
            nn.Linear(H, 10),
        )

    m_step = tt_model()

    def tt_per_step():
        m_step.zero_grad(set_to_none=True)
        for layer in (m_step[1], m_step[3]):
            layer.zero_states()
        out = 0
        for x in xs.unbind(0):
            out = out + m_step(x)
        Fn.cross_entropy(out, labels).backward()

    v["tracetorch per-step (object API)"] = tt_per_step

    m_fun = tt_model()

    def tt_functional():
        m_fun.zero_grad(set_to_none=True)
        h = xs
        for i in (0, 2):
            lin, lif = m_fun[i], m_fun[i + 1]
            h = lin(h)
            h, _ = F.scan(
                F.lib_step, lif.activated_params(), F.init_state("LIB", h[0]), h, quant_fn="round", fast=False
            )
        Fn.cross_entropy(m_fun[4](h).sum(0), labels).backward()

    v["tracetorch functional scan (loop)"] = tt_functional

    for name, fast in (("tracetorch sequence mode (loop)", False), ("tracetorch sequence mode (kernels)", True)):
        m = tt_model()

        def seq(m=m, fast=fast):
            m.zero_grad(set_to_none=True)
            for layer in (m[1], m[3]):
                layer.zero_states()
            Fn.cross_entropy(tt_run(m, xs, fast=fast).sum(0), labels).backward()

        v[name] = seq

    if tt015 is not None:
        torch.manual_seed(0)
        m15 = nn.Sequential(
            nn.Linear(784, H),
            tt015.snn.LIB(H, quant_fn="round"),
            nn.Linear(H, H),
            tt015.snn.LIB(H, quant_fn="round"),
            nn.Linear(H, 10),
        )

        def tt015_step():
            m15.zero_grad(set_to_none=True)
            m15[1].zero_states()
            m15[3].zero_states()
            out = 0
            for x in xs.unbind(0):
                out = out + m15(x)
            Fn.cross_entropy(out, labels).backward()

        v["traceTorch 0.15 LIB, per step"] = tt015_step

    try:
        import snntorch as snn
        from snntorch import surrogate as ssur

        torch.manual_seed(0)
        fcs = nn.ModuleList([nn.Linear(784, H), nn.Linear(H, H), nn.Linear(H, 10)])
        lifs = [
            snn.Leaky(beta=0.9, threshold=1.0, spike_grad=ssur.sigmoid(slope=4), reset_delay=False) for _ in range(2)
        ]

        def snntorch_step():
            fcs.zero_grad(set_to_none=True)
            mems = [lif.init_leaky() for lif in lifs]
            out = 0
            for x in xs.unbind(0):
                h = x
                for i, lif in enumerate(lifs):
                    h, mems[i] = lif(fcs[i](h), mems[i])
                out = out + fcs[2](h)
            Fn.cross_entropy(out, labels).backward()

        v["snnTorch Leaky, per step"] = snntorch_step
    except ImportError:
        pass

    try:
        import norse.torch as norse
        from norse.torch.functional.reset import reset_subtract

        torch.manual_seed(0)
        nfcs = nn.ModuleList([nn.Linear(784, H), nn.Linear(H, H), nn.Linear(H, 10)])
        p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(1.0), reset_method=reset_subtract)
        cells = [norse.LIFBoxCell(p, dt=0.001) for _ in range(2)]

        def norse_step():
            nfcs.zero_grad(set_to_none=True)
            states = [None, None]
            out = 0
            for x in xs.unbind(0):
                h = x
                for i, cell in enumerate(cells):
                    h, states[i] = cell(nfcs[i](h), states[i])
                out = out + nfcs[2](h)
            Fn.cross_entropy(out, labels).backward()

        v["Norse LIFBoxCell, per step"] = norse_step
    except ImportError:
        pass

    try:
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import layer as sjl
        from spikingjelly.activation_based import neuron as sjn
        from spikingjelly.activation_based import surrogate as sjs

        torch.manual_seed(0)

        def lif():
            return sjn.LIFNode(
                tau=10.0, decay_input=False, v_threshold=1.0, v_reset=None, surrogate_function=sjs.Sigmoid(alpha=4.0)
            )

        sj = nn.Sequential(sjl.Linear(784, H), lif(), sjl.Linear(H, H), lif(), sjl.Linear(H, 10))
        sjf.set_step_mode(sj, "m")

        def sj_step():
            sj.zero_grad(set_to_none=True)
            sjf.reset_net(sj)
            Fn.cross_entropy(sj(xs).sum(0), labels).backward()

        v["SpikingJelly LIFNode, multi-step"] = sj_step
    except ImportError:
        pass

    # floor 1: the GEMMs of forward and backward on T*B rows (no grad wrt the input)
    a0 = xs.reshape(T * B, 784)
    a1 = torch.rand(T * B, H)
    w = [torch.randn(H, 784) * 0.03, torch.randn(H, H) * 0.03, torch.randn(10, H) * 0.03]
    d = [torch.randn(T * B, H), torch.randn(T * B, H), torch.randn(T * B, 10)]

    def gemms():
        a0 @ w[0].t(), a1 @ w[1].t(), a1 @ w[2].t()  # forward
        d[2].t() @ a1, d[2] @ w[2]  # readout: dW, dX
        d[1].t() @ a1, d[1] @ w[1]  # hidden: dW, dX
        d[0].t() @ a0  # first layer: dW only

    v["floor: GEMMs only"] = gemms
    return v, {"neuron_steps": T * B * 2 * H}


# ---- W2 -----------------------------------------------------------------------------------------


def w2_variants(T: int, B: int, N: int, tt015, forward_only: bool) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(T, B, N, generator=g).mul_(0.6).requires_grad_(not forward_only)
    wgt = torch.randn(T, B, N, generator=g)
    v: dict[str, Callable[[], None]] = {}

    def train(fn):
        def step():
            xs.grad = None
            ys = fn()
            if forward_only:
                return
            ys.backward(wgt)  # the weighted-sum loss (ys * wgt).sum(), its gradient wgt fed in directly

        if forward_only:

            def no_grad_step():
                with torch.no_grad():
                    fn()

            return no_grad_step
        return step

    lif = tt.nn.LIB(N, quant_fn="round")

    def tt_step():
        lif.zero_states()
        return torch.stack([lif(x) for x in xs.unbind(0)])

    v["tracetorch per-step (object API)"] = train(tt_step)

    def tt_scan():
        return F.scan(F.lib_step, lif.activated_params(), F.init_state("LIB", xs[0]), xs, quant_fn="round", fast=False)[
            0
        ]

    v["tracetorch functional scan (loop)"] = train(tt_scan)

    def tt_fast():
        lif.zero_states()
        return tt_run(lif, xs, fast=True)

    v["tracetorch sequence mode (kernels)"] = train(tt_fast)

    if tt015 is not None:
        lif15 = tt015.snn.LIB(N, quant_fn="round")

        def tt015_step():
            lif15.zero_states()
            return torch.stack([lif15(x) for x in xs.unbind(0)])

        v["traceTorch 0.15 LIB, per step"] = train(tt015_step)

    try:
        import snntorch as snn
        from snntorch import surrogate as ssur

        leaky = snn.Leaky(beta=0.9, threshold=1.0, spike_grad=ssur.sigmoid(slope=4), reset_delay=False)

        def snn_step():
            mem = leaky.init_leaky()
            out = []
            for x in xs.unbind(0):
                s, mem = leaky(x, mem)
                out.append(s)
            return torch.stack(out)

        v["snnTorch Leaky, per step"] = train(snn_step)
    except ImportError:
        pass

    try:
        import norse.torch as norse
        from norse.torch.functional.reset import reset_subtract

        p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(1.0), reset_method=reset_subtract)
        cell = norse.LIFBoxCell(p, dt=0.001)

        def norse_step():
            state, out = None, []
            for x in xs.unbind(0):
                s, state = cell(x, state)
                out.append(s)
            return torch.stack(out)

        v["Norse LIFBoxCell, per step"] = train(norse_step)
    except ImportError:
        pass

    try:
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron as sjn
        from spikingjelly.activation_based import surrogate as sjs

        node = sjn.LIFNode(
            tau=10.0,
            decay_input=False,
            v_threshold=1.0,
            v_reset=None,
            surrogate_function=sjs.Sigmoid(alpha=4.0),
            step_mode="m",
        )

        def sj_step():
            sjf.reset_net(node)
            return node(xs)

        v["SpikingJelly LIFNode, multi-step"] = train(sj_step)
    except ImportError:
        pass
    return v


# ---- timing -------------------------------------------------------------------------------------


def measure(variants: dict[str, Callable[[], None]], rounds: int, reference: str) -> dict[str, dict[str, float]]:
    for fn in variants.values():  # warm-up (the kernels' first build happened before)
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            gc.collect()
            times[k].append(_time(fn))
    out = {}
    for k, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times[reference])]
        out[k] = {
            "median": statistics.median(ts) * 1e3,
            "min": min(ts) * 1e3,
            "max": max(ts) * 1e3,
            "ratio": statistics.median(ratios),
        }
    return out


def memory(variants: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Peak MB of one step of each variant, with glibc returning freed memory at once. That setting
    lasts for the rest of the process (mallopt turns glibc's adaptive thresholds off for good), so
    main() takes every memory pass after all the timing."""
    set_malloc("eager")
    try:
        return {k: peak_mb(fn) for k, fn in variants.items()}
    finally:
        set_malloc(ARGS.malloc)


def table(title: str, res: dict[str, dict[str, float]], mem: dict[str, float], floor_ms: float | None, ref: str) -> str:
    lines = [f"### {title}", "", f"| variant | ms (median) | min-max | x {ref} (paired) | x floor | peak MB |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for k, r in res.items():
        fl = f"{r['median'] / floor_ms:.2f}" if floor_ms else ""
        m = mem.get(k, float("nan"))
        lines.append(
            f"| {k} | {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} | {r['ratio']:.2f} | {fl} | "
            f"{'' if m != m else f'{m:.0f}'} |"
        )
    if floor_ms:
        lines.append(f"| floor (GEMMs + neuron traffic at bandwidth) | {floor_ms:.1f} | | | 1.00 | |")
    return "\n".join(lines)


def first_call(fn: Callable[[], None]) -> float:
    return _time(fn)


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    set_malloc(ARGS.malloc)
    tt015 = None if ARGS.no_tt015 else load_tt015()
    bw = bandwidth_gbs()
    out = [
        f"torch {torch.__version__}, {ARGS.threads} threads, {os.cpu_count()} CPUs, malloc {ARGS.malloc}, "
        f"copy bandwidth {bw:.1f} GB/s, {ARGS.rounds} rounds; traceTorch 0.15 "
        f"{'loaded as tracetorch015' if tt015 else 'not available'}",
        "",
        DIFFERENCES,
    ]
    print("\n".join(out), flush=True)
    goals: list[str] = []
    charts: list[tuple[str, dict, float]] = []
    ref = "tracetorch sequence mode (kernels)"
    sizes = [("W1 small", 50, 64, 512), ("W1 large", 200, 32, 1024)]
    sizes = [s for s, key in zip(sizes, ("w1s", "w1l")) if key in ARGS.workloads]
    if ARGS.quick:
        sizes = [("W1 (quick: T=20, B=16, H=256)", 20, 16, 256)]
    # every workload is timed first, under the malloc settings asked for; the memory passes (which
    # switch glibc to returning memory at once, a setting that cannot be undone) come after them all
    timed: list[tuple[dict, dict, Callable[[dict, dict], None]]] = []  # (variants, timings, report)
    for title, T, B, H in sizes:
        variants, info = w1_variants(T, B, H, tt015)
        t_compile = first_call(variants[ref])
        res = measure(variants, ARGS.rounds, ref)
        neuron_ms = 24 * info["neuron_steps"] / (bw * 1e9) * 1e3
        floor = res["floor: GEMMs only"]["median"] + neuron_ms

        def report_w1(res, mem, title=title, T=T, B=B, H=H, floor=floor, t_compile=t_compile, neuron_ms=neuron_ms):
            sj = "SpikingJelly LIFNode, multi-step"
            text = table(f"{title}: training step (T={T}, B={B}, H={H})", res, mem, floor, "kernels")
            text += f"\n\nfirst call of the kernel path (build included): {t_compile:.2f} s; neuron traffic {neuron_ms:.1f} ms"
            print(text + "\n", flush=True)
            out.extend([text, ""])
            charts.append((title, res, floor))
            if sj in res:
                goals.append(
                    f"{title}: kernels / SpikingJelly = {res[ref]['median'] / res[sj]['median']:.2f}; "
                    f"kernels / floor = {res[ref]['median'] / floor:.2f}{' (goal <= 1.1)' if T == 50 else ''}; "
                    f"peak memory kernels / SpikingJelly = {mem[ref] / mem[sj]:.2f}"
                )
            t15 = "traceTorch 0.15 LIB, per step"
            if t15 in res:
                ps = res["tracetorch per-step (object API)"]
                goals.append(
                    f"{title}: traceTorch 0.15 per step / per-step object API = {res[t15]['ratio'] / ps['ratio']:.2f} "
                    "(goal >= 1.5)"
                )

        timed.append((variants, res, report_w1))
    T, B, N = (20, 16, 1024) if ARGS.quick else (100, 64, 4096)
    for forward_only in (False, True):
        if "w2" not in ARGS.workloads and not ARGS.quick:
            break
        variants = w2_variants(T, B, N, tt015, forward_only)
        t_compile = first_call(variants[ref])
        res = measure(variants, ARGS.rounds, ref)
        floor = (8 if forward_only else 24) * T * B * N / (bw * 1e9) * 1e3

        def report_w2(res, mem, forward_only=forward_only, floor=floor, t_compile=t_compile):
            what = "forward only (no_grad)" if forward_only else "forward + backward"
            text = table(f"W2: one LIF layer, {what} (T={T}, B={B}, N={N})", res, mem, floor, "kernels")
            text = text.replace(
                "floor (GEMMs + neuron traffic at bandwidth)",
                f"floor ({8 if forward_only else 24} B per neuron-step at bandwidth)",
            )
            text += f"\n\nfirst call of the kernel path (build included): {t_compile:.2f} s"
            print(text + "\n", flush=True)
            out.extend([text, ""])
            sj = "SpikingJelly LIFNode, multi-step"
            vs_sj = f"kernels / SpikingJelly = {res[ref]['median'] / res[sj]['median']:.2f}" if sj in res else ""
            goals.append(
                f"W2 {what}: {vs_sj}{' (goal <= 0.1)' if not forward_only and vs_sj else ''}; "
                f"kernels / floor = {res[ref]['median'] / floor:.2f} (goal <= {'2' if forward_only else '2.5'})"
            )
            charts.append((f"W2 {what}", res, floor))

        timed.append((variants, res, report_w2))
    for variants, res, report in timed:
        report(res, {k: float("nan") for k in variants} if ARGS.json else memory(variants))
    if ARGS.json:  # a child of --allocator: the timings, for the parent's table
        Path(ARGS.json).write_text(json.dumps({f"{i}": r for i, (_, r, _) in enumerate(timed)}))
        return
    if "cold" in ARGS.workloads or ARGS.quick:
        text, goal = cold_start_table()
        print(text + "\n", flush=True)
        out += [text, ""]
        goals.append(goal)
    if ARGS.chart:
        write_chart(charts, ref, Path(ARGS.chart))
    out += ["### Goals", "", *[f"- {g}" for g in goals]]
    print("### Goals\n\n" + "\n".join(f"- {g}" for g in goals), flush=True)
    if ARGS.out:
        Path(ARGS.out).write_text("\n".join(out) + "\n" + kept_sections(Path(ARGS.out)))


#: Sections of RESULTS.md written by other scripts (examples/timing_tasks.py --results): kept as they are.
KEPT_HEADING = "## Timing tasks"


def kept_sections(path: Path) -> str:
    """The part of ``path`` from the line ``KEPT_HEADING`` on (with a blank line before it), or ``""``."""
    text = path.read_text() if path.exists() else ""
    at = text.find("\n" + KEPT_HEADING + "\n")
    return "" if at < 0 else "\n" + text[at + 1 :]


# ---- cold start and chart ------------------------------------------------------------------------

COLD_SCRIPT = """
import time, sys
t0 = time.perf_counter()
import torch
from torch import nn
import torch.nn.functional as Fn
torch.set_num_threads(__THREADS__)
torch.manual_seed(0)
T, B, H = 50, 64, 512
xs = (torch.rand(T, B, 784) < 0.2).float()
labels = torch.randint(0, 10, (B,))
if __LIBRARY__ == "tracetorch":
    import tracetorch as tt
    t1 = time.perf_counter()
    model = nn.Sequential(nn.Linear(784, H), tt.nn.LIB(H, quant_fn="round"), nn.Linear(H, H),
                          tt.nn.LIB(H, quant_fn="round"), nn.Linear(H, 10))
    def forward():
        for layer in (model[1], model[3]):
            layer.zero_states()
        return tt.nn.run(model, xs).sum(0)
else:
    from spikingjelly.activation_based import functional, layer, neuron
    t1 = time.perf_counter()
    model = nn.Sequential(layer.Linear(784, H), neuron.LIFNode(tau=10.0, decay_input=False, v_reset=None,
                          step_mode="m"), layer.Linear(H, H), neuron.LIFNode(tau=10.0, decay_input=False,
                          v_reset=None, step_mode="m"), layer.Linear(H, 10))
    functional.set_step_mode(model, "m")
    def forward():
        functional.reset_net(model)
        return model(xs).sum(0)
opt = torch.optim.Adam(model.parameters(), 1e-3)
for _ in range(6):
    opt.zero_grad()
    Fn.cross_entropy(forward(), labels).backward()
    opt.step()
print(time.perf_counter() - t1)
"""


def cold_start(lib: str) -> tuple[float, float] | None:
    """Seconds for a fresh process with empty caches to import, build and train the W1 MLP 6
    iterations: from process start to end, and from the model's creation (imports done) to the end."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TRACETORCH_CACHE_DIR": cache, "TORCHINDUCTOR_CACHE_DIR": cache}
        code = COLD_SCRIPT.replace("__THREADS__", str(ARGS.threads)).replace("__LIBRARY__", repr(lib))
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            return None
        return time.perf_counter() - t, float(out.stdout.split()[-1])


def cold_start_table() -> tuple[str, str]:
    rounds = 5
    tt_s, sj_s = [], []
    for _ in range(rounds):  # interleaved, so a noisy spell hits both
        tt_s.append(cold_start("tracetorch"))
        sj_s.append(cold_start("spikingjelly"))
    lines = [
        "### Cold start: a fresh process with empty caches trains the W1 small MLP for 6 iterations",
        "",
        f"| library | s, process start to end (median of {rounds}) | s, model created to end (imports done) |",
        "|---|---:|---:|",
    ]
    nan = (float("nan"), float("nan"))
    tt_med = [statistics.median(x) for x in zip(*tt_s)] if None not in tt_s else nan
    lines.append(f"| tracetorch sequence mode (kernels, empty kernel cache) | {tt_med[0]:.2f} | {tt_med[1]:.2f} |")
    if None not in sj_s:
        sj_med = [statistics.median(x) for x in zip(*sj_s)]
        lines.append(f"| SpikingJelly LIFNode, multi-step | {sj_med[0]:.2f} | {sj_med[1]:.2f} |")
        paired = statistics.median([a[1] / b[1] for a, b in zip(tt_s, sj_s)])  # type: ignore[index]
        goal = (
            f"cold start: tracetorch / SpikingJelly = {tt_med[0] / sj_med[0]:.2f} process, "
            f"{paired:.2f} model created to end (paired) (goal <= 1)"
        )
    else:
        goal = f"cold start: tracetorch {tt_med[0]:.2f} s (SpikingJelly not available)"
    return "\n".join(lines), goal


def write_chart(charts: list[tuple[str, dict, float]], ref: str, path: Path) -> None:
    """One panel per workload: each variant's median time as a multiple of the kernel path's (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(charts), 1, figsize=(9, 2.2 + 0.45 * sum(len(r) for _, r, _ in charts)))
    axes = [axes] if len(charts) == 1 else list(axes)
    for ax, (title, res, floor) in zip(axes, charts):
        names = [k for k in res if k != "floor: GEMMs only"]
        ratios = [res[k]["median"] / res[ref]["median"] for k in names] + [floor / res[ref]["median"]]
        labels = names + ["memory / compute floor"]
        colors = ["tab:orange" if k == ref else "tab:blue" if k.startswith("tracetorch") else "tab:gray" for k in names]
        ax.barh(labels, ratios, color=colors + ["tab:green"])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{title}: time / tracetorch kernels (lower is faster)", fontsize=9)
        for i, r in enumerate(ratios):
            ax.text(r, i, f" {r:.2f}x", va="center", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- the allocator: the same workloads under other malloc settings, each in a fresh process ----

#: what each mode sets in the child's environment; the preloaded libraries only where installed
ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "glibc-tuned": {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483648"},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2"},
    "tcmalloc": {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},
}


def _preloadable(lib: str) -> bool:
    """Whether ``LD_PRELOAD=lib`` works here (the loader only warns, on stderr, when it cannot
    preload; a dlopen test would refuse jemalloc, which preloads fine but not into a running process)."""
    done = subprocess.run(["true"], env={**os.environ, "LD_PRELOAD": lib}, capture_output=True, text=True)
    return done.returncode == 0 and "cannot be preloaded" not in done.stderr


def allocator_table(modes: list[str]) -> str:
    """Every timed workload once per allocator mode, modes interleaved over ``--allocator-repeats``
    fresh processes each: the median per variant of the per-process medians, in ms, and its ratio
    to glibc's defaults (the paired median over repeats)."""
    usable = [m for m in modes if "LD_PRELOAD" not in ALLOCATORS[m] or _preloadable(ALLOCATORS[m]["LD_PRELOAD"])]
    skipped = [m for m in modes if m not in usable]
    workloads = ",".join(w for w in ARGS.workloads.split(",") if w != "cold")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in usable}
    titles: list[str] = []
    for _ in range(ARGS.allocator_repeats):
        for mode in usable:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "res.json"
                cmd = [sys.executable, __file__, "--workloads", workloads, "--rounds", str(ARGS.rounds),
                       "--threads", str(ARGS.threads), "--no-tt015", "--json", str(out)]  # fmt: skip
                if ARGS.quick:
                    cmd.append("--quick")
                env = {**os.environ, **ALLOCATORS[mode]}
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"bench under {mode}: {done.stderr[-2000:]}")
                res = json.loads(out.read_text())
                titles = [ln[4:] for ln in done.stdout.splitlines() if ln.startswith("### ")]
                runs[mode].append({f"{titles[int(i)]} | {k}": v["median"] for i, r in res.items() for k, v in r.items()})
    keys = list(runs[usable[0]][0])
    lines = [
        f"### Allocators: ms (median of {ARGS.allocator_repeats} fresh processes x {ARGS.rounds} rounds), "
        "x glibc defaults in ()",
        "",
        "| workload | variant | " + " | ".join(usable) + " |",
        "|---|---|" + "---:|" * len(usable),
    ]
    for key in keys:
        base = [r[key] for r in runs["default"]] if "default" in runs else None
        cells = []
        for m in usable:
            vals = [r[key] for r in runs[m]]
            cell = f"{statistics.median(vals):.1f}"
            if base and m != "default":
                cell += f" ({statistics.median([a / b for a, b in zip(vals, base)]):.2f})"
            cells.append(cell)
        title, variant = key.split(" | ", 1)
        lines.append(f"| {title.split(' (T=')[0]} | {variant} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Modes: " + "; ".join(f"{m}: {' '.join(f'{k}={v}' for k, v in ALLOCATORS[m].items()) or 'nothing set'}"
                                     for m in usable))  # fmt: skip
    if skipped:
        lines.append(f"Not installed here, skipped: {', '.join(skipped)}.")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 3 rounds (under a minute once compiled)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 15, quick 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--malloc", choices=["default", "tuned"], default="default", help="glibc malloc settings")
    p.add_argument("--no-tt015", action="store_true", help="skip traceTorch 0.15 (needs pip download)")
    p.add_argument("--out", default=None, help="also write the markdown tables to this file")
    p.add_argument("--workloads", default="w1s,w1l,w2,cold", help="comma-separated subset of w1s, w1l, w2, cold")
    p.add_argument("--chart", default=None, help="write a bar chart of the paired ratios to this PNG")
    p.add_argument(
        "--allocator",
        default=None,
        help=f"re-run the workloads (not cold) in fresh processes under each of these malloc modes, "
        f"comma-separated or 'all' ({', '.join(ALLOCATORS)}), and print one table of them",
    )
    p.add_argument("--allocator-repeats", type=int, default=3, help="fresh processes per allocator mode (default 3)")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)  # a child of --allocator writes its timings here
    args = p.parse_args()
    if args.allocator:
        modes = list(ALLOCATORS) if args.allocator == "all" else args.allocator.split(",")
        unknown = [m for m in modes if m not in ALLOCATORS]
        if unknown:
            p.error(f"--allocator: unknown modes {unknown}; choose from {', '.join(ALLOCATORS)} or 'all'")
        args.allocator = modes
    if args.rounds is None:
        args.rounds = 3 if args.quick else 15
    return args


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.allocator:
        text = allocator_table(ARGS.allocator)
        print(text, flush=True)
        if ARGS.out:
            Path(ARGS.out).write_text(text + "\n")
    else:
        main()
