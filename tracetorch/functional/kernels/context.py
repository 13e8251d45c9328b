"""Per-call facts for choosing a path: is *this* call being traced?

``torch.compiler.is_compiling()`` is a process-wide flag: it is True in every thread while any
thread runs ``torch.compile``, so reading it in eager code makes one thread's eager calls change
path (other results, other random draws) because another thread compiles. :func:`tracing` reads
only facts of this call: Dynamo tracing this very frame (``torch.compiler.is_dynamo_compiling()``
is folded to True in traced code and is False when run eagerly), or a torch dispatch mode active
on this thread (``make_fx``, ``FakeTensorMode``: the mode stack is thread-local).
"""

from __future__ import annotations

import torch

__all__ = ["tracing"]


def tracing() -> bool:
    """Whether this call is being traced (Dynamo in this frame, or a dispatch mode on this thread)."""
    return torch.compiler.is_dynamo_compiling() or torch._C._len_torch_dispatch_stack() > 0
