"""`natfast bench lanes` as a script: how many architectures should go through the supernet's cells
together on a CPU (natfast/benchmarks/lanes.py).

    python bench/lanes_sweep.py [--rounds 4]

Prints what `natfast bench lanes` prints (`--json`: one JSON object).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this source tree's natfast

from natfast.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "lanes", *sys.argv[1:]]))
