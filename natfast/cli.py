"""The `natfast` command: search, transform, train, draw, info, bench."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ._malloc import keep_freed_memory
from .config import (SEARCH_PRESETS, TRAIN_PRESETS, DrawConfig, SearchConfig, TrainConfig, TransformConfig,
                     add_arguments, from_arguments, search_preset)


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


def _user_errors():
    from .checkpoint import CheckpointError
    from .data import DataError
    from .genotype import GenotypeError
    from .ops.dispatch import BackendDeclined  # a backend forced (NATFAST_BACKEND) that cannot run a call
    return (CheckpointError, DataError, GenotypeError, BackendDeclined, UserError, ValueError, FileNotFoundError)


def _run_failures():
    """A run that stopped: a non-finite loss, or a process of a torchrun group that failed."""
    from .distributed import RankFailure, StoppedOnRankZero
    from .faults import NonFiniteError
    return (NonFiniteError, RankFailure, StoppedOnRankZero)


def _report(command: str, exc: Exception) -> None:
    """One line on stderr; under torchrun only rank 0 reports what every process hit alike."""
    from .distributed import StoppedOnRankZero, main_rank_only
    from .faults import NonFiniteError
    if main_rank_only():
        print(f"natfast {command}: error: {exc}", file=sys.stderr)
    elif not isinstance(exc, (StoppedOnRankZero, NonFiniteError)):
        print(f"natfast {command} (rank {os.environ.get('RANK', '?')}): error: {exc}", file=sys.stderr)


def cmd_search(args) -> int:
    from .search import search
    cfg = from_arguments(SearchConfig, args, search_preset(args.preset, args.transitions))
    searcher = search(cfg)
    if searcher.ranks.is_main:
        print(f"checkpoint: {os.path.join(cfg.out, 'checkpoint.pt')}  (steps {searcher.position.step}, "
              f"reward baseline {searcher.baseline:+.4f})")
    return 0


def cmd_transform(args) -> int:
    from . import derive
    from .flops import count
    from .genotype import format_genotype, load_arch, to_json
    from .authors import TRANSFORM_PRESET
    from .policy_file import load_policy, load_shipped
    cfg = from_arguments(TransformConfig, args, dict(TRANSFORM_PRESET) if args.preset == "authors" else {})
    if cfg.method not in ("argmax", "best-of-k"):
        raise UserError(f"--method must be argmax or best-of-k, got {cfg.method!r}")
    beta, family = load_arch(cfg.arch)
    if cfg.method == "argmax":
        # The policy alone: a policy file, a search checkpoint's, or the one shipped for the family.
        loaded = load_policy(cfg.checkpoint, cfg.device) if cfg.checkpoint else load_shipped(family, cfg.device)
        if not cfg.checkpoint:
            print(f"policy shipped with natfast ({loaded.path}): {loaded.description}; "
                  f"--checkpoint uses another")
        alpha = derive.transform_argmax(loaded.policy, derive.check_input(beta, loaded.family))
        searched = loaded.family
    else:
        if not cfg.checkpoint:
            raise UserError("--method best-of-k scores candidates with a search's supernet: pass --checkpoint "
                            "with a search checkpoint (the shipped policy has no supernet)")
        result = derive.load_search(cfg.checkpoint, cfg.device)
        beta = derive.check_input(beta, result.family)
        loader = derive.scoring_loader(result.config, cfg.score_data, cfg.data)
        best = derive.transform_best_of_k(result, beta, cfg.candidates, cfg.seed, loader, cfg.eval_batches,
                                          cfg.keep_input, None if cfg.engine == "search" else cfg.engine)
        alpha, searched = best.best, result.family
        print(f"best-of-{cfg.candidates}: input {best.beta_score:.4f}, candidates "
              + " ".join(f"{s:.4f}" for s in best.scores))
    # alpha lives in the searched family (NAT++ widens the input's op set), and is saved as such so
    # that `natfast train --arch` reads it back.
    cost_beta, cost_alpha = count(beta, family, madds=cfg.madds), count(alpha, searched, madds=cfg.madds)
    out = cfg.out or os.path.join(os.path.dirname(os.path.abspath(cfg.checkpoint)) if cfg.checkpoint
                                  else os.path.join("runs", "transform"), "transformed.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)   # as search and train make --out
    with open(out, "w") as fh:
        fh.write(to_json(alpha, searched) + "\n" if out.endswith(".json") else format_genotype(alpha) + "\n")
    print(f"input {cfg.arch} ({family.name}): {cost_beta}")
    print(format_genotype(beta))
    print(f"transformed ({cfg.method}): {cost_alpha}; saved to {out}")
    if cfg.draw:
        from .draw import draw
        draw([(cfg.arch, beta, family), (f"NAT({cfg.arch})", alpha, searched)], cfg.draw,
             [str(cost_beta), str(cost_alpha)])
        print(f"drawing: {cfg.draw}")
    print(format_genotype(alpha))
    return 0


def cmd_train(args) -> int:
    from .train import Trainer
    preset = args.preset or ("imagenet" if args.dataset == "imagenet" else None)
    cfg = from_arguments(TrainConfig, args, dict(TRAIN_PRESETS[preset]) if preset else {})
    trainer = Trainer(cfg)
    record = trainer.run()
    if trainer.ranks.is_main:
        print(f"test accuracy {record.get('test_acc', float('nan')):.4f} after {cfg.epochs} epochs; "
              f"checkpoint: {os.path.join(cfg.out, 'checkpoint.pt')}")
    return 0


def cmd_experiment(args) -> int:
    from .experiment import experiment
    from .experiment_config import EXPERIMENT_PRESETS, ExperimentConfig
    cfg = from_arguments(ExperimentConfig, args, dict(EXPERIMENT_PRESETS[args.preset]) if args.preset else {})
    experiment(cfg)
    return 0


def cmd_draw(args) -> int:
    from .draw import draw
    from .flops import count
    from .genotype import load_arch
    cfg = from_arguments(DrawConfig, args)
    archs = [(cfg.arch,) + load_arch(cfg.arch)]
    if cfg.compare:
        archs.append((cfg.compare,) + load_arch(cfg.compare))
    costs = [str(count(g, f, madds=cfg.madds, dataset=cfg.dataset)) for _, g, f in archs]
    print(draw(archs, cfg.out, costs))
    return 0


def cmd_info(args) -> int:
    from .info import collect, format_text
    info = collect()
    print(json.dumps(info) if args.json else format_text(info))
    return 0


def cmd_bench(args) -> int:
    from . import benchmarks
    rest = [a for a in args.rest if a != "--json"]
    result = benchmarks.run(args.what, rest)
    if args.json or len(rest) != len(args.rest):
        print(json.dumps(result))
    else:
        print(benchmarks.format_result(args.what, result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natfast", description="NAT: Neural Architecture Transformer, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("search", help="train the supernet and the transformation policy")
    p.add_argument("--preset", choices=SEARCH_PRESETS, help="start from a preset (tiny: < 3 min on a 2-core CPU; "
                                                            "authors: the NAT authors' code, docs/authors.md)")
    add_arguments(p, SearchConfig)
    p.set_defaults(fn=cmd_search)
    p = sub.add_parser("transform", help="transform an architecture with a trained policy")
    p.add_argument("--preset", choices=["authors"], help="the authors' derive.py: best of 10 samples, the best "
                                                        "always (docs/authors.md)")
    add_arguments(p, TransformConfig)
    p.set_defaults(fn=cmd_transform)
    p = sub.add_parser("train", help="train an architecture from scratch (DARTS protocol)")
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), help="start from a preset (tiny: a smoke run)")
    add_arguments(p, TrainConfig)
    p.set_defaults(fn=cmd_train)
    from .experiment_config import EXPERIMENT_PRESETS, ExperimentConfig
    p = sub.add_parser("experiment", help="does NAT work? search, transform, train original / NAT / random, report")
    p.add_argument("--preset", choices=list(EXPERIMENT_PRESETS),
                   help="start from a preset (tiny: a smoke run; cpu: 2 CPU cores, 2 hours; paper: GPUs)")
    add_arguments(p, ExperimentConfig)
    p.set_defaults(fn=cmd_experiment)
    p = sub.add_parser("draw", help="draw architectures' cells as a PNG")
    add_arguments(p, DrawConfig)
    p.set_defaults(fn=cmd_draw)
    p = sub.add_parser("info", help="which backends are active, and why")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(fn=cmd_info)
    from .benchmarks import COMMANDS as BENCHMARKS
    p = sub.add_parser("bench", help=f"benchmarks: {', '.join(BENCHMARKS)} (see bench/RESULTS.md)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="\n".join(f"{k:18s} {v}" for k, v in BENCHMARKS.items()))
    p.add_argument("what", choices=list(BENCHMARKS), metavar="what", help="one of the benchmarks above")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (--help lists them)")
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        code = args.fn(args)
    except _user_errors() as exc:
        _report(args.command, exc)
        return 2
    except _run_failures() as exc:
        _report(args.command, exc)
        return 1
    except KeyboardInterrupt:
        print(f"natfast {args.command}: interrupted (the last checkpoint is intact)", file=sys.stderr)
        return 130
    from .distributed import shutdown
    shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
