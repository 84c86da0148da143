"""One process of a data-parallel search for tests/test_distributed.py, through the Python API:
it initialises the process group itself (gloo, from the RANK / WORLD_SIZE / MASTER_* environment
the test sets, as torchrun does), runs the search, and records which architectures it drew at
each step in OUT/archs_rank<R>.json.

    python tests/distributed_driver.py OUT '{"max_steps": 6, ...}'
"""
import datetime
import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.distributed as dist  # noqa: E402

from natfast.config import SearchConfig  # noqa: E402

search_module = importlib.import_module("natfast.search")   # (natfast.search is also the function)


def main(out: str, overrides: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    searcher = search_module.Searcher(SearchConfig(out=out, **json.loads(overrides)), log=lambda _: None)
    drawn = {}
    real = search_module.sample_genotype

    def recording(family, generator):
        geno = real(family, generator)
        drawn.setdefault(searcher.position.step, []).append(str(geno))
        return geno

    search_module.sample_genotype = recording
    searcher.run()
    with open(os.path.join(out, f"archs_rank{dist.get_rank()}.json"), "w") as fh:
        json.dump(drawn, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
