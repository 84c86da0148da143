"""`natfast bench executor` as a script: per-step cost of the sampled path, the compiled executor
against `Supernet.forward` (natfast/benchmarks/executor.py).

    python bench/executor_overhead.py [--device cpu|cuda] [--repeat 20]

Prints what `natfast bench executor` prints (`--json`: one JSON object).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this source tree's natfast

from natfast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "executor", *sys.argv[1:]]))
