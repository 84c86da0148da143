"""`natfast bench cpu-scoring` as a script: what natfast's CPU scoring choices give, each against
its alternative in the same process (natfast/benchmarks/cpu_scoring.py).

    python bench/cpu_scoring_ab.py [--rounds 4] [--ops-only | --step-only]

Prints the result as JSON (the keys of `natfast bench cpu-scoring --json`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this source tree's natfast

from natfast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "cpu-scoring", "--json", *sys.argv[1:]]))
