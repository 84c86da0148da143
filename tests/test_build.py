"""setup.py's compiler flags: the OpenMP probe's for a compiler that takes -fopenmp, for one that
does not (as Apple's clang), and for a compiler given as a command with arguments (CXX="ccache g++");
and the debug-symbol switch."""
import ast
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform != "linux" or shutil.which("c++") is None
                                or "parallel backend: OpenMP" not in torch.__config__.parallel_info(),
                                reason="needs Linux, a c++ compiler and a torch threading with OpenMP")


def _setup_helpers() -> dict:
    """setup.py's imports and functions, without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))
            or (isinstance(node, ast.Assign) and "_extension_modules" not in ast.dump(node))]
    namespace = {"__file__": str(ROOT / "setup.py"), "__name__": "natfast_setup"}
    exec(compile(ast.Module(body=body, type_ignores=[]), "setup.py", "exec"), namespace)
    return namespace


def _compiler_without_openmp(folder: Path) -> str:
    """A c++ that rejects -fopenmp, as Apple's clang does."""
    path = folder / "c++"
    path.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec c++ "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_openmp_flags_follow_the_compiler(tmp_path, monkeypatch, capsys):
    helpers = _setup_helpers()
    monkeypatch.setenv("CXX", "c++")
    assert helpers["_openmp_flags"](torch) == (["-fopenmp"], ["-fopenmp"])
    monkeypatch.setenv("CXX", "env c++")  # a command with arguments, as "ccache g++"
    assert helpers["_openmp_flags"](torch) == (["-fopenmp"], ["-fopenmp"])
    monkeypatch.setenv("CXX", _compiler_without_openmp(tmp_path))
    capsys.readouterr()
    assert helpers["_openmp_flags"](torch) == ([], [])
    assert "without OpenMP" in capsys.readouterr().err


def test_debug_symbols_are_dropped_unless_asked_for(monkeypatch):
    # Python's build flags carry -g (30 of the extension's 33 MB); -g0 after them drops it.
    helpers = _setup_helpers()
    monkeypatch.delenv("NATFAST_DEBUG_INFO", raising=False)
    assert helpers["_cxx_flags"](["-fopenmp"]) == ["-O3", "-fopenmp", "-g0"]
    monkeypatch.setenv("NATFAST_DEBUG_INFO", "1")
    assert helpers["_cxx_flags"](["-fopenmp"]) == ["-O3", "-fopenmp"]
