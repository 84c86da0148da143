"""`natfast bench breakdown` as a script: where the batched derive pass spends its time, and what
writing node sums in place gives (natfast/benchmarks/breakdown.py).

    python bench/derive_breakdown.py [natfast bench derive's workload flags] [--rounds 7]

Prints the result as JSON (the keys of `natfast bench breakdown --json`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this source tree's natfast

from natfast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "breakdown", "--json", *sys.argv[1:]]))
