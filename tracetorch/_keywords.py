"""Keyword errors that say what to do: a misspelt keyword is named, with the valid ones.

Python's own message for ``run(model, xs, detach_evry=1)`` is ``run() got an unexpected keyword
argument 'detach_evry'``: it names the bad keyword, not the good ones. :func:`keywords` wraps a
public function so that an argument error *of the call itself* (an unknown keyword, a missing or
doubled argument) comes out as a ``TypeError`` naming the function, the bad keyword, the closest
valid one and every valid keyword. The wrapper costs nothing else: the call is tried as it is,
and only a ``TypeError`` raised by binding the arguments (no frame of the function ran) is
rewritten; errors from inside the function pass unchanged.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["keywords", "keyword_message"]

F = TypeVar("F", bound=Callable[..., Any])

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def keyword_message(
    owner: str, signature: inspect.Signature, kwargs: dict[str, Any], err: BaseException, show_signature: bool = True
) -> str:
    """The message for an argument error of a call of ``owner`` with these keyword arguments."""
    valid = [p.name for p in signature.parameters.values() if p.kind in _NAMED and p.name != "self"]
    unknown = [k for k in kwargs if k not in valid]
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(k, valid, n=1)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        shown = f" (signature {owner}{signature})" if show_signature else ""
        return f"{owner}: unknown keyword argument {', '.join(parts)}; valid keywords: {', '.join(valid)}{shown}"
    return f"{owner}: {err}; signature {owner}{signature}"


def keywords(fn: F) -> F:
    """Wrap the public function ``fn`` so that a bad keyword names itself and the valid ones (``TypeError``)."""
    full = inspect.signature(fn)
    signature = full.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in full.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    owner = fn.__name__ if "<" in fn.__qualname__ else fn.__qualname__

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TypeError as err:
            tb = err.__traceback__
            if tb is None or tb.tb_next is not None:
                raise  # raised inside fn: not an argument error of this call
            raise TypeError(keyword_message(owner, signature, kwargs, err)) from None

    call.__tt_keywords__ = True  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]
