"""`natfast bench factorized-reduce` as a script: FactorizedReduce's two fused halves against the
unfused way (natfast/benchmarks/factorized_reduce.py).

    python bench/factorized_reduce.py [--repeats 9]

Prints what `natfast bench factorized-reduce` prints (`--json`: one JSON object).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this source tree's natfast

from natfast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "factorized-reduce", *sys.argv[1:]]))
