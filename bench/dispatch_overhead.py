"""`natfast bench dispatch` as a script: per-call cost of natfast's dispatch (picking a backend), in
microseconds (natfast/benchmarks/dispatch.py).

    python bench/dispatch_overhead.py [--calls 50000]

Prints what `natfast bench dispatch` prints (`--json`: one JSON object).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this source tree's natfast

from natfast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "dispatch", *sys.argv[1:]]))
