"""Fast backends. Each module registers its implementations with `natfast.ops.dispatch` when its
prerequisites are present (the compiled extension, Triton, a GPU) and records why not otherwise.
"""
from __future__ import annotations

import importlib
from typing import Dict

STATUS: Dict[str, str] = {}


def load_all() -> Dict[str, str]:
    """Import every backend once; returns {backend: status sentence}."""
    for name in ("cpu", "triton", "cuda"):
        if name in STATUS:
            continue
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:
            STATUS[name] = f"not available: {exc}"
            continue
        STATUS[name] = module.register()
    return STATUS
