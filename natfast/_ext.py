"""Loading the compiled extension natfast._C, and why it is or is not available."""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional, Tuple

import torch


@functools.lru_cache(maxsize=None)
def load() -> Tuple[Optional[object], str]:
    """(module or None, a sentence saying what was loaded or why not).

    NATFAST_EXTENSION=/path/lib.so loads a development build instead (its operators register
    with torch's dispatcher exactly as natfast._C's do)."""
    if os.environ.get("NATFAST_DISABLE_EXTENSION"):
        return None, "disabled by NATFAST_DISABLE_EXTENSION"
    path = os.environ.get("NATFAST_EXTENSION")
    if path:
        try:
            torch.ops.load_library(path)
        except OSError as exc:
            return None, f"NATFAST_EXTENSION={path} could not be loaded: {exc}"
        return object(), f"development build {path}"
    build = "run `pip install --no-build-isolation -e .`"
    if importlib.util.find_spec(f"{__package__}._C") is None:
        # Said plainly: Python's own message here blames a circular import.
        return None, f"natfast._C is not built; {build}"
    try:
        from . import _C  # noqa: F401
    except ImportError as exc:  # built, but against another torch or Python: rebuild
        return None, f"natfast._C does not load ({exc}); rebuild it: {build}"
    return _C, "natfast._C"


def has_op(name: str) -> bool:
    """Whether the operator natfast::<name> is registered (the extension loaded and built it)."""
    load()
    try:
        getattr(torch.ops.natfast, name)
    except (AttributeError, RuntimeError):
        return False
    return True
