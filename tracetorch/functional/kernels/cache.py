"""The kernel cache on disk, held to what a cache of native code must promise, and fork safety.

A built kernel is native code that :func:`ctypes.CDLL` maps into the process, so whoever can
write the cache can run code in it. The rules:

* **The directory** (:func:`directory`): ``$TRACETORCH_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/tracetorch``, else ``~/.cache/tracetorch`` (:func:`configured_dir`). Missing
  directories are created with mode ``0o700`` whatever the umask. Before any load the directory
  must be a directory owned by this process's effective user, writable by it, and writable by
  nobody else (no group or other write bit). One that is not (a world-writable ``/tmp``, a
  directory another user owns, a read-only one, a path under a regular file) is refused with one
  warning per process naming it and the reason, and kernels go to a private temporary directory
  (``tempfile.mkdtemp``, mode ``0o700``, removed at exit) for the rest of the process.
* **The entries** (:func:`open_entry`, :func:`store`): a library ``tt_<key>.so`` and its record
  ``tt_<key>.json`` (size and SHA-256 of the library, written at build). Before ``dlopen`` both
  must be regular files (not links) owned by this user with no group or other write bit, and the
  library's size and hash must match the record. Anything else (truncated, emptied, garbage, a
  foreign library, a planted file) is a bad entry: it is rebuilt, never loaded. Files are written
  to a temporary name with mode ``0o600`` and renamed into place, so no reader sees half a file.
* **Fork** (:class:`ForkSafeLock`, :func:`forked_child_threads`): every lock of the kernel engine
  comes back released in a child made by ``os.fork`` (one inherited held by another thread's build
  would hang the child), and in a child forked from a thread that ran a multi-threaded kernel, the
  kernels run on one thread: the child inherits libgomp's thread pool without its threads, and
  its first parallel region would wait for them forever.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

__all__ = [
    "configured_dir",
    "directory",
    "check_dir",
    "open_entry",
    "store",
    "read_record",
    "write_record",
    "ForkSafeLock",
    "forked_child_threads",
    "ran_parallel",
]


# ---- fork safety ------------------------------------------------------------------------------


class ForkSafeLock:
    """A :class:`threading.Lock` that a child made by ``os.fork`` gets back released.

    A lock held by another thread at the fork (a kernel being built) would stay held for ever in
    the child, which has only the forking thread; every instance is replaced by a fresh lock
    there. Use as ``with lock: ...``.
    """

    _all: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        ForkSafeLock._all.add(self)

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()

    def locked(self) -> bool:
        """Whether some thread holds the lock."""
        return self._lock.locked()


#: thread ids that ran a kernel on more than one OpenMP thread (their libgomp pool exists)
_PARALLEL_THREADS: set[int] = set()
#: in a forked child: the torch thread count it inherited, when the kernels must stay on one thread
_CHILD: dict[str, int | None] = {"inherited_threads": None}


def ran_parallel(nthreads: int) -> None:
    """Note that this thread is about to run a kernel on ``nthreads`` OpenMP threads."""
    if nthreads > 1:
        _PARALLEL_THREADS.add(threading.get_ident())


def forked_child_threads(requested: int) -> int:
    """``requested`` OpenMP threads, or 1 in a forked child whose parent's forking thread ran a
    multi-threaded kernel, unless ``torch.set_num_threads`` changed the count in the child."""
    inherited = _CHILD["inherited_threads"]
    if inherited is None or requested <= 1:
        return requested
    import torch

    return requested if torch.get_num_threads() != inherited else 1


def _after_fork_in_child() -> None:
    for lock in list(ForkSafeLock._all):
        lock._lock = threading.Lock()
    # the child's only thread is the forking one, with the same id
    if threading.get_ident() in _PARALLEL_THREADS or _CHILD["inherited_threads"] is not None:
        import sys

        torch = sys.modules.get("torch")
        _CHILD["inherited_threads"] = torch.get_num_threads() if torch is not None else 0
    _PARALLEL_THREADS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- the directory ------------------------------------------------------------------------------

_DIR_LOCK = ForkSafeLock()
_FALLBACK: dict[str, Any] = {}  # "path": the private temporary directory, "pid": who made it
_WARNED: set[str] = set()


def configured_dir() -> Path:
    """Where built kernels are kept: ``$TRACETORCH_CACHE_DIR``, else the user's cache directory.

    The directory actually used can differ: see :func:`directory`.
    """
    env = os.environ.get("TRACETORCH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tracetorch"


def _make_private(path: Path) -> None:
    """Create ``path`` and its missing parents with mode ``0o700`` (whatever the umask)."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)  # the umask only removes bits: 0o700 at most
        except FileExistsError:
            pass


def check_dir(path: Path, create: bool = True) -> str | None:
    """Why ``path`` cannot hold this user's kernels (a phrase), or ``None`` when it can.

    It must be a directory owned by this process's effective user, writable by it and by nobody
    else; with ``create`` a missing one is made private first.
    """
    try:
        if create:
            _make_private(path)
        st = os.stat(path)
    except OSError as err:
        return f"it cannot be created or read ({err.strerror or err})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it is owned by another user (uid {st.st_uid}, this process runs as uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"other users can write to it (mode {stat.S_IMODE(st.st_mode):#o})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def _remove_fallback(path: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked child leaves its parent's directory alone
        shutil.rmtree(path, ignore_errors=True)


def _fallback_dir() -> Path:
    found = _FALLBACK.get("path")
    if found is not None and check_dir(Path(found), create=False) is None:
        return Path(found)
    path = tempfile.mkdtemp(prefix="tracetorch-kernels-")  # mode 0o700, owned by us
    _FALLBACK.update(path=path, pid=os.getpid())
    atexit.register(_remove_fallback, path, os.getpid())
    return Path(path)


def directory() -> Path:
    """The checked directory to load kernels from and build them into (see the module docstring).

    The configured one (:func:`configured_dir`) where it passes :func:`check_dir`; else, with one
    warning per process and directory, a private temporary one. ``OSError`` if even that fails.
    """
    path = configured_dir()
    why = check_dir(path)
    if why is None:
        return path
    with _DIR_LOCK:
        fallback = _fallback_dir()
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            warnings.warn(
                f"tracetorch: the kernel cache directory {str(path)!r} is not used: {why}. Kernels are "
                f"built into the private temporary directory {str(fallback)!r} for this process instead "
                "(set TRACETORCH_CACHE_DIR to a directory only you can write to, to keep them)",
                RuntimeWarning,
                stacklevel=2,
            )
        return fallback


# ---- the entries --------------------------------------------------------------------------------


def _open_private(path: Path) -> int | None:
    """A read-only descriptor of ``path`` if it is a regular file (not a link) owned by this user
    that nobody else can write, else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def read_record(lib_path: Path) -> dict[str, Any] | None:
    """The record next to ``lib_path`` (``.json``: size, sha256, and what the kernel's self-check
    found), if it is a private regular file holding a JSON object; else ``None``."""
    fd = _open_private(lib_path.with_suffix(".json"))
    if fd is None:
        return None
    try:
        rec = json.loads(_read_all(fd).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return rec if isinstance(rec, dict) else None


def open_entry(lib_path: Path) -> dict[str, Any] | None:
    """The record of ``lib_path`` if the library may be loaded: both files private and ours, the
    library's size and SHA-256 those recorded at its build. ``None`` for a missing or bad entry."""
    rec = read_record(lib_path)
    if rec is None:
        return None
    fd = _open_private(lib_path)
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size != rec.get("size"):
            return None
        data = _read_all(fd)
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        return None
    return rec


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same directory, mode 0o600, renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_record(lib_path: Path, rec: dict[str, Any]) -> None:
    """Replace the record of ``lib_path`` (atomically, mode 0o600)."""
    _write_private(lib_path.with_suffix(".json"), json.dumps(rec, sort_keys=True).encode())


def store(built: Path, lib_path: Path) -> dict[str, Any]:
    """Move the freshly built library ``built`` (in the same directory) to ``lib_path`` with its
    record; returns the record. The library is made ``0o600`` first (the compiler's output mode
    follows the umask)."""
    os.chmod(built, 0o600)
    data = built.read_bytes()
    rec = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    os.replace(built, lib_path)
    write_record(lib_path, rec)
    return rec
