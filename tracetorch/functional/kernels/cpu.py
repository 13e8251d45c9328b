"""The CPU backend: the traced step printed as C with OpenMP, built by the system compiler, cached on disk.

Each kernel is two C files, one with ``tt_forward`` and one with ``tt_backward``, for one
``(type, spike function, quantizer, dtype)``, built as two libraries at the same time (a cold
build waits for the longer of the two, not their sum; different libraries build in parallel,
one library is built once). The elements of one timestep (``S`` of them: batch
times neurons) are cut into blocks; each OpenMP thread takes whole blocks and runs the entire
time loop over its block with the state in a small array that stays in L1 cache, the loop over
the block's elements vectorized (``#pragma omp simd``). The forward keeps the state only at
chunk starts (every :func:`chunk_steps` steps); the backward runs the chunks in reverse with the
same blocking, recomputes a chunk's states from its checkpoint into a per-thread buffer that stays
in L2, then runs the chunk's steps backwards, recomputing each step's forward from the state before it.

Optimization ``-O2``: the ``omp simd`` loops vectorize as at ``-O3``, the kernels measured within
2-4% of ``-O3``'s speed and build in half the time (0.27 s against 0.50 s for LIB with gcc 12).

Floating point: ``-ffp-contract=off``: no fused multiply-adds, no reassociation and no
``-ffast-math``, so every add and multiply rounds as torch's do and a membrane lands on the same
side of its threshold as in the plain step; ``-fno-math-errno -fno-trapping-math`` let ``rint``
and the selects vectorize. The float32 ``exp`` (inside ``sigmoid``) is our own vectorizable
range-reduced polynomial, within about one ulp of libm's; float64 uses libm's ``exp``. A
``"round"`` spike of ``sigmoid(a)`` is printed as ``a >= edge``, the edge found by bisection on the
kernel's own sigmoid, so it equals rounding that sigmoid for every ``a`` and costs no ``exp``.

Build: ``$TRACETORCH_CC``, else ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on PATH; with
``-fopenmp`` where the compiler links it (else single-threaded). Libraries land in
``$TRACETORCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tracetorch`` or ``~/.cache/tracetorch``), named
by a hash of the source, flags, compiler version and CPU, built in a private temporary directory
and renamed into place, so two processes building the same kernel at once never see half a file.
What is checked before a library is loaded (owner and mode of the directory and the files, the
size and SHA-256 recorded at the build) is in :mod:`.cache`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import cache
from .codegen import Dialect, backward_lines, forward_lines
from .trace import Adjoint, Traced

__all__ = [
    "c_source",
    "Compiler",
    "compiler",
    "cache_dir",
    "load",
    "library_name",
    "BuildError",
    "threads_for",
    "chunk_steps",
    "saved_steps",
]

BLOCK = {"float": 2048, "double": 1024}
_SIZE = {"float": 4, "double": 8}
#: bytes of one thread's chunk buffer (the recomputed states of one chunk of one block), on the
#: thread's stack: small enough for any thread stack, large enough that a longer chunk measured no faster
CHUNK_BYTES = 64 * 1024


def chunk_steps(n_state: int, real: str) -> int:
    """Timesteps per checkpoint chunk: as many as fit the chunk buffer, between 2 and 16."""
    return max(2, min(16, CHUNK_BYTES // (_SIZE[real] * n_state * BLOCK[real])))


def saved_steps(T: int, n_state: int, real: str) -> int:
    """Checkpoints the forward keeps for the backward: the states entering steps K, 2K, ... < T.

    ``T >= 1`` (a scan has at least one step); no ``max``, so a symbolic ``T`` under
    ``torch.compile`` stays symbolic instead of being guarded on.
    """
    return (T - 1) // chunk_steps(n_state, real)


def threads_for(T: int, S: int, real: str) -> int:
    """OpenMP threads for a call: torch's intra-op count, fewer when there is too little work to share.

    A thread gets whole blocks of elements, and starting one costs about as much as a few tens of
    thousands of neuron-steps, so small calls (the per-step case) run on one thread. One thread in
    a child forked after the kernels ran multi-threaded (:func:`.cache.forked_child_threads`).
    Called right before each kernel call, whose thread it notes.
    """
    import torch

    blocks = -(-S // BLOCK[real])
    n = cache.forked_child_threads(max(1, min(torch.get_num_threads(), blocks, (T * S) >> 15)))
    cache.ran_parallel(n)
    return n


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


# ---- C source -----------------------------------------------------------------------------------

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
typedef REAL real;
#define TT_BLOCK BLOCKSIZE

static inline real tt_exp(real x) {
#if TT_DOUBLE
    return exp(x);
#else
    /* exp(x) = 2^n * e^r, |r| <= ln2/2: Cody-Waite reduction, degree-6 minimax polynomial (~1 ulp);
       NaN stays NaN, overflow gives inf, underflow 0; the scale is applied in two halves */
    float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
    float n = __builtin_rintf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    union { uint32_t i; float f; } s1, s2;
    s1.i = (uint32_t)(n1 + 127) << 23;
    s2.i = (uint32_t)(n2 + 127) << 23;
    return x != x ? x : p * s1.f * s2.f;
#endif
}

static inline real tt_sigmoid(real x) { return (real)1 / ((real)1 + tt_exp(-x)); }

/* The smallest x with tt_sigmoid(x) > 1/2, by bisection on the bit patterns of the floats in
   [0, 1] (ordered as their patterns are). rint(tt_sigmoid(x)) is 1 from there on and 0 below
   (1/2 rounds to even, 0), so a "round" spike is a comparison and needs no exp or division. */
static real tt_sigmoid_edge(void) {
#if TT_DOUBLE
    typedef uint64_t bits_t;
    bits_t lo = 0, hi = 0x3FF0000000000000ULL;
#else
    typedef uint32_t bits_t;
    bits_t lo = 0, hi = 0x3F800000U;
#endif
    union { bits_t i; real f; } m;
    while (hi - lo > 1) {
        m.i = lo + (hi - lo) / 2;
        if (tt_sigmoid(m.f) > (real)0.5) hi = m.i; else lo = m.i;
    }
    m.i = hi;
    return m.f;
}

/* rint(tt_sigmoid(a)) for every a, NaN included, as the kernels compute it */
#define TT_ROUND_SIGMOID(a) ((a) != (a) ? (a) : ((a) >= tt_edge ? (real)1 : (real)0))

/* for the tests: the edge, and the two spellings of a "round" spike of sigmoid(a) */
real tt_edge_value(void) { return tt_sigmoid_edge(); }
real tt_round_sigmoid_direct(real a) { return TT_RINT(tt_sigmoid(a)); }
real tt_round_sigmoid_edge(real a) { const real tt_edge = tt_sigmoid_edge(); return TT_ROUND_SIGMOID(a); }

/* dst[j] = src[((i0 + j) / inner) % n] for j < w: a broadcast scalar, contiguous runs of a
   per-neuron vector (inner == 1, the [B, N] layout), or a running index (neurons along another dim) */
static inline void tt_fill(real* dst, const real* src, long n, long inner, long i0, int w) {
    if (n == 1) {
        for (int j = 0; j < w; j++) dst[j] = src[0];
    } else if (inner == 1) {
        long k = i0 % n;
        for (int j = 0; j < w;) {
            const int run = (int)(n - k < w - j ? n - k : w - j);
            for (int u = 0; u < run; u++) dst[j + u] = src[k + u];
            j += run;
            k = 0;
        }
    } else {
        long c = i0 % inner, k = (i0 / inner) % n;
        for (int j = 0; j < w; j++) {
            dst[j] = src[k];
            if (++c == inner) { c = 0; if (++k == n) k = 0; }
        }
    }
}

static inline uint32_t tt_mix(uint32_t h) {
    h ^= h >> 16; h *= 0x7feb352dU; h ^= h >> 15; h *= 0x846ca68bU; h ^= h >> 16;
    return h;
}

/* a uniform draw in [0, 1) for (seed, counter, site): a counter-based hash, so the backward
   recomputes exactly the forward's draws instead of storing them */
static inline real tt_uniform(uint64_t seed, uint64_t ctr, uint32_t site) {
    uint32_t h = tt_mix((uint32_t)ctr ^ (uint32_t)seed);
    h = tt_mix(h ^ (uint32_t)(ctr >> 32) ^ (site * 0x9e3779b9U));
    h = tt_mix(h + (uint32_t)(seed >> 32));
    return (real)(h >> 8) * (real)5.9604644775390625e-08;
}
"""


def _c_const(value: float, real: str) -> str:
    if value != value:
        return "((real)NAN)"
    if value in (float("inf"), float("-inf")):
        return f"({'-' if value < 0 else ''}(real)INFINITY)"
    return f"((real){value.hex()})"


def _dialect(real: str) -> Dialect:
    f = "f" if real == "float" else ""
    return Dialect(
        const=lambda v: _c_const(v, real),
        select=lambda c, a, b: f"({c} ? {a} : {b})",
        call={
            "sigmoid": lambda a: f"tt_sigmoid({a})",
            "exp": lambda a: f"tt_exp({a})",
            "atan": lambda a: f"atan{f}({a})",
            "erf": lambda a: f"erf{f}({a})",
            "abs": lambda a: f"__builtin_fabs{f}({a})",
            "isnan": lambda a: f"({a} != {a})",
            "tanh": lambda a: f"tanh{f}({a})",
            "log": lambda a: f"log{f}({a})",
            "log1p": lambda a: f"log1p{f}({a})",
            "sqrt": lambda a: f"sqrt{f}({a})",
            "rsqrt": lambda a: f"((real)1 / sqrt{f}({a}))",
            "floor": lambda a: f"floor{f}({a})",
            "ceil": lambda a: f"ceil{f}({a})",
            "round": lambda a: f"TT_RINT({a})",
            "float": lambda a: f"((real)({a}))",
            "pow": lambda a, c: f"pow{f}({a}, {_c_const(c, real)})",
        },
        quant=_c_quant,
        declare=lambda name, expr, boolean: f"const {'int' if boolean else 'real'} {name} = {expr};",
        logical={"and": "&&", "or": "||", "not": "!"},
        round_sigmoid=lambda a: f"TT_ROUND_SIGMOID({a})",
    )


def _c_quant(quant: str, p: str, site: int) -> str:
    if quant == "round":
        return f"TT_RINT({p})"
    fire = f"({p} != {p} ? {p} : (tt_uniform(seed, ctr, {site}u) < {p} ? (real)1 : (real)0))"
    return fire if quant == "bernoulli" else f"({p} * {fire})"


def c_source(tr: Traced, adj: Adjoint | None, quant: str, real: str, part: str = "both") -> str:
    """The C file of one kernel: ``tt_forward`` and ``tt_backward`` (``part="both"``, the backward
    only when ``adj`` is given), or one of them alone (``part="forward"`` / ``"backward"``).

    The kernels are built as two libraries, forward and backward, in parallel: a translation unit
    each, so the first build of a process waits for the longer of the two, not for their sum.
    """
    if part not in ("both", "forward", "backward") or (part == "backward" and adj is None):
        raise ValueError(f"c_source: part must be 'both', 'forward' or 'backward' (with an adjoint), received {part!r}")
    d = _dialect(real)
    ns, np_ = len(tr.state), len(tr.params)
    fwd = forward_lines(tr, d, quant, lambda kind, k: {"x": "xt[j]", "state": f"s{k}[j]", "param": f"p{k}[j]"}[kind])
    head = _PRELUDE.replace("REAL", real).replace("BLOCKSIZE", str(BLOCK[real]))
    head = (
        f"#define TT_DOUBLE {int(real == 'double')}\n#define TT_RINT __builtin_rint{'f' if real == 'float' else ''}\n"
        f"#define TT_CHUNK {chunk_steps(ns, real)}\n" + head
    )

    def block_setup(grad: bool) -> list[str]:
        lines = [
            "const long i0 = b * TT_BLOCK;",
            "const int w = (int)(S - i0 < TT_BLOCK ? S - i0 : TT_BLOCK);",
        ]
        for k in range(np_):
            lines.append(f"real p{k}[TT_BLOCK];")
            lines.append(f"tt_fill(p{k}, prm[{k}], pn[{k}], pin[{k}], i0, w);")
        for k in range(ns):  # forward: the state; backward: the adjoint of the state, from the final one's
            lines.append(f"real s{k}[TT_BLOCK];")
            lines.append(f"for (int j = 0; j < w; j++) s{k}[j] = {'gstT' if grad else 'st0'}[{k}][i0 + j];")
        return lines

    fw = [
        "void tt_forward(long T, long S, const real* xs, real* ys, const real* const* st0, real* const* stT,",
        "                real* saved, const real* const* prm, const long* pn, const long* pin, uint64_t seed,",
        "                int nthreads) {",
        "    const long nblk = (S + TT_BLOCK - 1) / TT_BLOCK;",
        "    const long nsv = T > 0 ? (T - 1) / TT_CHUNK : 0;",
        "    const real tt_edge = tt_sigmoid_edge(); (void)tt_edge;",
        "    #pragma omp parallel for num_threads(nthreads) schedule(static)",
        "    for (long b = 0; b < nblk; b++) {",
        *("        " + s for s in block_setup(False)),
        "        for (long t = 0; t < T; t++) {",
        "            const real* xt = xs + t * S + i0;",
        "            real* yt = ys + t * S + i0;",
        "            #pragma omp simd",
        "            for (int j = 0; j < w; j++) {",
        "                const uint64_t ctr = (uint64_t)(t * S + i0 + j); (void)ctr;",
        *("                " + s for s in fwd),
        f"                yt[j] = v{tr.y};",
        *(f"                s{k}[j] = v{n};" for k, n in enumerate(tr.new_state)),
        "            }",
        "            if (saved && (t + 1) % TT_CHUNK == 0 && t + 1 < T) {  /* a checkpoint: the state entering t + 1 */",
        "                const long slot = (t + 1) / TT_CHUNK - 1;",
        *(
            f"                for (int j = 0; j < w; j++) saved[({k} * nsv + slot) * S + i0 + j] = s{k}[j];"
            for k in range(ns)
        ),
        "            }",
        "        }",
        *(f"        for (int j = 0; j < w; j++) stT[{k}][i0 + j] = s{k}[j];" for k in range(ns)),
        "    }",
        "}",
    ]
    if adj is None or part == "forward":
        return head + "\n".join(fw) + "\n"
    seed = lambda e: "gyt[j]" if e[0] == "seed_y" else f"s{e[1]}[j]"  # noqa: E731 (s<k> holds the adjoint)
    bl, leaves = backward_lines(tr, adj, d, seed)
    fwd_b = forward_lines(tr, d, quant, lambda kind, k: {"x": "xt[j]", "state": f"o{k}[j]", "param": f"p{k}[j]"}[kind])
    bw = [
        "void tt_backward(long T, long S, const real* xs, const real* const* st0, const real* saved,",
        "                 const real* const* prm, const long* pn, const long* pin, uint64_t seed,",
        "                 const real* gys, const real* const* gstT, real* gxs, real* const* gst0,",
        "                 real* const* gprm, int nthreads) {",
        "    const long nblk = (S + TT_BLOCK - 1) / TT_BLOCK;",
        "    const long nsv = T > 0 ? (T - 1) / TT_CHUNK : 0;",
        "    const real tt_edge = tt_sigmoid_edge(); (void)tt_edge;",
        "    #pragma omp parallel for num_threads(nthreads) schedule(static)",
        "    for (long b = 0; b < nblk; b++) {",
        *("        " + s for s in block_setup(True)),
        *(f"        real q{k}[TT_BLOCK];" for k in range(np_)),
        *(f"        for (int j = 0; j < w; j++) q{k}[j] = (real)0;" for k in range(np_)),
        *(f"        real h{k}[TT_CHUNK * TT_BLOCK];" for k in range(ns)),
        "        for (long c = nsv; c >= 0; c--) {",
        "            const long t0 = c * TT_CHUNK, t1 = t0 + TT_CHUNK < T ? t0 + TT_CHUNK : T;",
        "            /* the states entering steps t0 .. t1 - 1, recomputed from the checkpoint into h */",
        *(
            f"            for (int j = 0; j < w; j++) h{k}[j] = c ? saved[({k} * nsv + c - 1) * S + i0 + j] : st0[{k}][i0 + j];"
            for k in range(ns)
        ),
        "            for (long t = t0; t + 1 < t1; t++) {",
        "                const real* xt = xs + t * S + i0;",
        *(f"                const real* o{k} = h{k} + (t - t0) * TT_BLOCK;" for k in range(ns)),
        *(f"                real* n{k} = h{k} + (t - t0 + 1) * TT_BLOCK;" for k in range(ns)),
        "                #pragma omp simd",
        "                for (int j = 0; j < w; j++) {",
        "                    const uint64_t ctr = (uint64_t)(t * S + i0 + j); (void)ctr;",
        *("                    " + s for s in fwd_b),
        *(f"                    n{k}[j] = v{n};" for k, n in enumerate(tr.new_state)),
        "                }",
        "            }",
        "            for (long t = t1 - 1; t >= t0; t--) {",
        "                const real* xt = xs + t * S + i0;",
        "                const real* gyt = gys + t * S + i0;",
        "                real* gxt = gxs + t * S + i0;",
        *(f"                const real* o{k} = h{k} + (t - t0) * TT_BLOCK;" for k in range(ns)),
        "                #pragma omp simd",
        "                for (int j = 0; j < w; j++) {",
        "                    const uint64_t ctr = (uint64_t)(t * S + i0 + j); (void)ctr;",
        *("                    " + s for s in fwd_b),
        *("                    " + s for s in bl),
        f"                    gxt[j] = {leaves['x']};",
        *(f"                    s{k}[j] = {leaves['state'][k]};" for k in range(ns)),
        *(f"                    q{k}[j] += {leaves['param'][k]};" for k in range(np_)),
        "                }",
        "            }",
        "        }",
        *(f"        for (int j = 0; j < w; j++) gst0[{k}][i0 + j] = s{k}[j];" for k in range(ns)),
        *(f"        for (int j = 0; j < w; j++) gprm[{k}][i0 + j] = q{k}[j];" for k in range(np_)),
        "    }",
        "}",
    ]
    if part == "backward":
        return head + "\n".join(bw) + "\n"
    return head + "\n".join(fw) + "\n\n" + "\n".join(bw) + "\n"


# ---- the compiler and the cache -----------------------------------------------------------------


def cache_dir() -> Path:
    """Where built kernels are kept: ``$TRACETORCH_CACHE_DIR``, else the user's cache directory.

    Before any load the directory is checked (:func:`.cache.directory`); one others can write to
    or another user owns is refused, with a warning, for a private temporary one.
    """
    return cache.configured_dir()


class Compiler:
    """A C compiler found on this machine: its path, version line and whether it links OpenMP."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            self.version = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else path
        except (OSError, subprocess.SubprocessError) as err:
            raise BuildError(f"the C compiler {path!r} does not run: {err}") from None
        self.base_flags = ["-O2", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
        if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
            self.base_flags.append("-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
        self.openmp: bool | None = None  # decided by the first build

    def flags(self) -> list[str]:
        return [*self.base_flags, "-fopenmp" if self.openmp is not False else "-fopenmp-simd"]


_COMPILER: dict[str, Compiler | BuildError] = {}
_LOCK = cache.ForkSafeLock()


def _find_compiler() -> str | None:
    for name in (os.environ.get("TRACETORCH_CC"), os.environ.get("CC"), "cc", "gcc", "clang"):
        if name:
            found = shutil.which(name)
            if found:
                return found
            if os.environ.get("TRACETORCH_CC") == name:
                return None  # an explicit choice that does not exist: no silent substitute
    return None


def compiler() -> Compiler:
    """The C compiler (found once per process and setting); :class:`BuildError` if there is none."""
    key = f"{os.environ.get('TRACETORCH_CC')}|{os.environ.get('CC')}|{os.environ.get('PATH')}"
    with _LOCK:
        found = _COMPILER.get(key)
        if found is None:
            path = _find_compiler()
            try:
                if path is None:
                    raise BuildError("no C compiler found (set TRACETORCH_CC or CC, or install gcc or clang)")
                found = Compiler(path)
            except BuildError as err:
                found = err
            _COMPILER[key] = found
    if isinstance(found, BuildError):
        raise found
    return found


def _cpu_tag() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))][:2]
        return "|".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


_LOADED: dict[str, ctypes.CDLL] = {}
# one lock per library being built or loaded, so different libraries build at the same time; keyed
# by process too: a child made by os.fork while a build ran would inherit that lock held for ever
_BUILDING: dict[tuple[int, str], cache.ForkSafeLock] = {}


def _compile(cc: Compiler, c_path: Path, so_path: Path) -> None:
    """Run the compiler; on the first build, without OpenMP if it fails with it. ``BuildError``
    with the compiler's own message (its first 3000 and last 1000 characters) if it fails."""
    deciding = cc.openmp is None  # (two first builds may run at once: each decides for itself)
    while True:
        cmd = [cc.path, *cc.flags(), str(c_path), "-o", str(so_path), "-lm"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as err:
            raise BuildError(f"building a tracetorch kernel with {cc.path} failed: {err}") from None
        if out.returncode == 0:
            if cc.openmp is None:
                cc.openmp = True
            return
        if deciding and "-fopenmp" in cmd:  # first build: maybe the compiler has no OpenMP runtime; try without
            cc.openmp = False
            continue
        message = (out.stderr or out.stdout).strip()
        if len(message) > 4000:  # the first errors say most; the last lines how it ended
            message = message[:3000] + "\n[...]\n" + message[-1000:]
        raise BuildError(
            f"building a tracetorch kernel with {cc.path} failed (exit status {out.returncode}):\n{message}"
        )


def _build(cc: Compiler, source: str, target: Path) -> None:
    """Build ``source`` into ``target`` with its record (see :mod:`.cache`); in a private
    temporary directory beside it, under fixed names (so the same build gives the same bytes)."""
    try:
        work = Path(tempfile.mkdtemp(prefix=target.stem + ".", suffix=".build", dir=target.parent))
    except OSError as err:
        raise BuildError(f"cannot build a tracetorch kernel in {str(target.parent)!r}: {err}") from None
    try:
        c_path, so_path = work / (target.stem + ".c"), work / target.name
        c_path.write_text(source)
        _compile(cc, c_path, so_path)
        cache.store(so_path, target)
    except OSError as err:
        raise BuildError(f"cannot write a tracetorch kernel into {str(target.parent)!r}: {err}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def library_name(source: str) -> str:
    """The cache file name of ``source``'s library, ``tt_<hash>.so``: the hash of the source, the
    flags, the compiler's version and the CPU (``BuildError`` without a compiler)."""
    cc = compiler()
    key = "\0".join([source, " ".join(cc.base_flags), cc.version, _cpu_tag()])
    return f"tt_{hashlib.sha256(key.encode()).hexdigest()[:32]}.so"


def load(source: str) -> ctypes.CDLL:
    """The built library of ``source``: from this process's memory, the disk cache, or a fresh build.

    A cached library is loaded only after the checks of :mod:`.cache` (a private directory, a
    private file, the size and SHA-256 recorded at its build); a bad entry is rebuilt.
    """
    cc = compiler()  # (takes _LOCK itself)
    digest = library_name(source)[3:-3]
    with _LOCK:
        lib = _LOADED.get(digest)
        if lib is not None:
            return lib
        key = (os.getpid(), digest)
        building = _BUILDING.get(key) or _BUILDING.setdefault(key, cache.ForkSafeLock())
    with building:  # another thread building this same library: wait for it, then take its result
        with _LOCK:
            lib = _LOADED.get(digest)
        if lib is not None:
            return lib
        try:
            target = cache.directory() / f"tt_{digest}.so"
        except OSError as err:
            raise BuildError(f"no directory to build tracetorch kernels in: {err}") from None
        if cache.open_entry(target) is None:  # missing, or bad: (re)built, never loaded
            _build(cc, source, target)
            if cache.open_entry(target) is None:
                raise BuildError(f"the tracetorch kernel just built at {str(target)!r} fails its checks")
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as err:
            raise BuildError(f"the tracetorch kernel {str(target)!r} does not load: {err}") from None
        with _LOCK:
            _LOADED[digest] = lib
        return lib
