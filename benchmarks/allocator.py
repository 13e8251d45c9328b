"""The issue-16 allocator workload under each malloc mode, paired: one LIB layer (T=100, B=64, N=4096)
trained through the kernels on a fresh input copy each step, (run(lay, x.clone().requires_grad_())
* w).sum().backward(); every mode in a fresh process per round, modes interleaved; the median of
7 steps per process, then medians over rounds and paired ratios to glibc's defaults.

    python benchmarks/allocator.py 3      # the number of rounds

bench.py --allocator all does the same for every benchmark workload.
"""

import os
import statistics
import subprocess
import sys

MODES = {
    "default": {},
    "glibc-tuned": {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483648"},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2"},
    "tcmalloc": {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},
}
CODE = r'''
import time, statistics, torch, tracetorch as tt
torch.set_num_threads(2); torch.manual_seed(0)
T, B, N = 100, 64, 4096
lay = tt.nn.LIB(N, quant_fn="round")
x = torch.rand(T, B, N) * 0.6; w = torch.randn(T, B, N)
def step():
    lay.zero_states()
    (tt.nn.run(lay, x.clone().requires_grad_()) * w).sum().backward()
step(); step()
ts = []
for _ in range(7):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
print(statistics.median(ts) * 1e3)
'''
res = {m: [] for m in MODES}
for r in range(int(sys.argv[1])):
    for m, env in MODES.items():
        out = subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **env}, capture_output=True, text=True)
        v = float(out.stdout.split()[-1]) if out.returncode == 0 else float("nan")
        if out.returncode:
            print(out.stderr[-500:])
        res[m].append(v)
        print(r, m, round(v, 1), "load", round(os.getloadavg()[0], 1), flush=True)
base = res["default"]
for m, vs in res.items():
    print(m, "median ms", round(statistics.median(vs), 1), "x default (paired)", round(statistics.median([a / b for a, b in zip(vs, base)]), 2))
