"""Compile for real GPUs every Triton kernel launch that the CPU tests make.

The CPU tests run the kernels in Triton's interpreter, which executes them as Python. It accepts
code that Triton's compiler rejects, such as a name whose type changes inside a loop. The first GPU
run found such a kernel. So the launches that the interpreted tests make are recorded: kernel,
argument types and constexpr values. Each distinct launch is then compiled ahead of time, for the
GPUs below, with the installed Triton. That needs no GPU: Triton ships its own ptxas.

  record:  NATFAST_RECORD_TRITON_LAUNCHES=launches.json python -m pytest -m triton ...
           (tests/conftest.py installs the recorder when the variable is set)
  compile: python tests/triton_compile_check.py launches.json [--arch 90] [--arch 80]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List

# sm_90: H100/H200 (the GPU check's machines); sm_80: A100.
DEFAULT_ARCHS = (90, 80)

_POINTER_TYPES = {
    "torch.float32": "fp32", "torch.float64": "fp64", "torch.float16": "fp16", "torch.bfloat16": "bf16",
    "torch.int64": "i64", "torch.int32": "i32", "torch.int16": "i16", "torch.int8": "i8",
    "torch.uint8": "u8", "torch.bool": "i1",
}


def _is_constexpr(annotation) -> bool:
    # Annotations are strings where a module uses `from __future__ import annotations`.
    return "constexpr" in (annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))


def _argument_type(value) -> str:
    """Triton's signature type of a runtime argument, as its launcher would derive it."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _POINTER_TYPES[str(value.dtype)]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a kernel argument of type {type(value).__name__}")


def _constexpr_value(value):
    value = getattr(value, "value", value)  # a tl.constexpr wrapper
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a constexpr of type {type(value).__name__}")


def describe_launch(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """The compile-time identity of one launch of the Python kernel function `fn`."""
    signature_of_fn = inspect.signature(fn)
    parameters = signature_of_fn.parameters
    bound = signature_of_fn.bind(*args, **kwargs)
    bound.apply_defaults()
    signature: Dict[str, str] = {}
    constexprs: Dict[str, object] = {}
    for name, parameter in parameters.items():
        value = bound.arguments[name]
        if _is_constexpr(parameter.annotation) or value is None:  # Triton treats None as a constexpr
            signature[name] = "constexpr"
            constexprs[name] = _constexpr_value(value)
        else:
            signature[name] = _argument_type(value)
    return {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constexprs": constexprs}


def install_recorder() -> Callable[[str], int]:
    """Record every interpreted launch from now on; returns `dump(path)`, which writes the distinct
    launches as JSON and returns how many there were."""
    from triton.runtime import interpreter

    launches: Dict[str, dict] = {}
    original_run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        launch = describe_launch(self.fn, args, kwargs)
        launches[json.dumps(launch, sort_keys=True)] = launch
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = recording_run

    def dump(path: str) -> int:
        Path(path).write_text(json.dumps(list(launches.values()), indent=1))
        return len(launches)

    return dump


def compile_launches(launches: List[dict], archs=DEFAULT_ARCHS) -> List[str]:
    """Compile each launch to a cubin for each arch; returns one line per failure."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from natfast.ops.backends.triton import load_kernels

    load_kernels()  # makes `natfast.kernels` importable from a source tree too
    failures = []
    for launch in launches:
        kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
        source = ASTSource(fn=kernel, signature=launch["signature"], constexprs=launch["constexprs"])
        for arch in archs:
            try:
                triton.compile(source, target=GPUTarget("cuda", arch, 32))
            except Exception as exc:  # the compiler's message is what the report needs
                message = str(exc).strip().splitlines()
                failures.append(f"{launch['module']}.{launch['kernel']} for sm_{arch} with "
                                f"{launch['constexprs']}: {message[-1] if message else type(exc).__name__}")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("launches", help="JSON written by the recorder")
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (default 90 and 80)")
    args = parser.parse_args(argv)
    launches = json.loads(Path(args.launches).read_text())
    archs = tuple(args.arch or DEFAULT_ARCHS)
    failures = compile_launches(launches, archs)
    kernels = sorted({f"{l['module']}.{l['kernel']}" for l in launches})
    print(f"{len(launches)} distinct launches of {len(kernels)} kernels, compiled for "
          f"{', '.join(f'sm_{a}' for a in archs)}: {len(failures)} failed")
    for line in failures:
        print("FAILED", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
