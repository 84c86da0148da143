"""`natfast experiment`: does NAT work? The paper's experiment end to end (spec section 6).

1. Search: one NAT search per family of the inputs (and one with the LSTM policy for the ablation),
   or the checkpoints given; each trained policy is also exported alone (`policies/`).
2. Architectures: for every input beta, NAT's argmax and best-of-K transformations (best-of-K
   scored on the search's validation split, never the test split), a random transformation that
   changes as many edges in each cell, uniformly among the transitions the rule allows, and the
   LSTM policy's argmax. Identical architectures of one input are trained once.
3. Training from scratch: every distinct architecture with seeds 0..S-1 (natfast/train.py).
4. Report (natfast/experiment_report.py): the table, accuracy against MAdds, training curves, cells.

Everything resumes: `experiment.json` records what started and what finished; a search or a
training run that started resumes from its own checkpoint, a finished one is not run again.
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import checkpoint as ckpt
from .config import SearchConfig, TrainConfig, from_saved, to_dict
from .experiment_config import FREE_KEYS, NAT_VARIANTS, VARIANTS, ExperimentConfig
from .genotype import CELLS, NAMED, Family, Genotype, get_family, load_arch, normalize, to_json
from .transitions import allowed_targets

STATE_FORMAT = "natfast-experiment-v1"
STATE_FILE = "experiment.json"
ARCHS_FILE = "architectures.json"


class ExperimentError(ValueError):
    """A problem with the experiment's settings or its folder: one clear line."""


# ----------------------------------------------------------------------------- inputs
@dataclass
class Input:
    name: str
    genotype: Genotype
    family: Family      # the searched family (NAT++ op set under natpp transitions)


def searched_family(name: str, transitions: str) -> Family:
    return get_family(name.rstrip("+"), natpp=(transitions == "natpp"))


def parse_inputs(cfg: ExperimentConfig) -> List[Input]:
    """The input architectures: names, genotype files and `random:N` cells, drawn as the search
    draws beta (uniform inputs and ops, no null) with a generator seeded by --input-seed."""
    from .derive import check_input
    from .sampler import sample_genotype
    inputs: List[Input] = []
    gen = torch.Generator().manual_seed(cfg.input_seed)
    random_count = 0
    for item in [s.strip() for s in cfg.inputs.split(",") if s.strip()]:
        match = re.fullmatch(r"random(?::(\d+))?", item, flags=re.IGNORECASE)
        if match:
            family = searched_family(cfg.random_family, cfg.transitions)
            for _ in range(int(match.group(1) or 1)):
                inputs.append(Input(f"random{random_count}", normalize(sample_genotype(family, gen)), family))
                random_count += 1
            continue
        genotype, family = load_arch(item)
        if not family.searchable:   # before experiment.json is written: a retry needs no --overwrite
            raise ExperimentError(f"--inputs: {item} is of the {family.name} family, for standalone networks "
                                  f"only (no supernet has its ops); NAT transforms darts- and enas-family cells")
        family = searched_family(family.name, cfg.transitions)
        named = {n.lower(): n for n in NAMED}
        name = named.get(item.lower()) or re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.splitext(os.path.basename(item))[0])
        inputs.append(Input(name, normalize(check_input(genotype, family)), family))
    names = [i.name for i in inputs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not inputs or repeated:
        raise ExperimentError(f"--inputs must name distinct architectures; got {cfg.inputs!r}"
                              + (f" (repeated: {', '.join(repeated)})" if repeated else ""))
    return inputs


def parse_variants(cfg: ExperimentConfig) -> List[str]:
    variants = [v.strip().lower() for v in cfg.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise ExperimentError(f"--variants: expected distinct names among {', '.join(VARIANTS)}, got {cfg.variants!r}")
    return variants


# ----------------------------------------------------------------------------- the random baseline
def changed_edges(beta: Genotype, alpha: Genotype) -> Tuple[int, int]:
    """How many edges of the normal and of the reduction cell carry another op in alpha."""
    b, a = normalize(beta), normalize(alpha)
    return tuple(sum(x[0] != y[0] for x, y in zip(getattr(b, c), getattr(a, c))) for c in CELLS)


def random_transformation(beta: Genotype, counts: Sequence[int], rule: str, primitives: Sequence[str],
                          gen: torch.Generator) -> Genotype:
    """beta with exactly counts[0] normal and counts[1] reduction edges changed: the edges uniformly
    among the cell's, each new op uniformly among the others the rule allows for it."""
    beta = normalize(beta)
    cells = {}
    for cell, n in zip(CELLS, counts):
        edges = list(getattr(beta, cell))
        if not 0 <= n <= len(edges):
            raise ValueError(f"{cell} cell: cannot change {n} of {len(edges)} edges")
        for i in sorted(torch.randperm(len(edges), generator=gen)[:n].tolist()):
            op, f, t = edges[i]
            others = [o for o in allowed_targets(op, rule, primitives) if o != op]
            if not others:
                raise ValueError(f"{cell} cell, edge {i}: {op} has no other allowed target under {rule}")
            edges[i] = (others[int(torch.randint(len(others), (1,), generator=gen))], f, t)
        cells[cell] = edges
    return normalize(beta._replace(**cells))


# ----------------------------------------------------------------------------- state
class State:
    """experiment.json: the config, and which searches and runs started and finished. Written
    atomically after every change."""

    def __init__(self, path: str, data: dict):
        self.path, self.data = path, data
        self.started, self.wall_before = time.perf_counter(), float(data.get("wall_seconds", 0.0))

    @classmethod
    def start(cls, cfg: ExperimentConfig) -> "State":
        path = os.path.join(cfg.out, STATE_FILE)
        exists = os.path.exists(path)
        if exists and not cfg.resume and not cfg.overwrite:
            raise ExperimentError(f"{cfg.out} already holds an experiment ({path}): pass --resume to continue "
                                  f"it, --overwrite to start afresh over it, or another --out")
        if exists and cfg.resume:
            state = cls(path, cls._read(path))
            saved, now = state.data["config"], to_dict(cfg)
            changed = [k for k in now if k not in FREE_KEYS and k != "out" and saved.get(k) != now[k]]
            if changed:
                raise ExperimentError("cannot resume: the experiment was started with different " + ", ".join(
                    f"--{k.replace('_', '-')} ({saved.get(k)!r} there, {now[k]!r} now)" for k in changed))
            state.data["config"] = now
            return state
        # Started with --overwrite, runs not started by this experiment replace what their folders hold.
        return cls(path, {"format": STATE_FORMAT, "config": to_dict(cfg), "replace_old_runs": bool(cfg.overwrite),
                          "searches": {}, "architectures": False, "runs": {}, "seconds": {}})

    @staticmethod
    def _read(path: str) -> dict:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ExperimentError(f"{path} is unreadable ({exc}); --overwrite starts afresh") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ExperimentError(f"{path} is not a natfast experiment state ({STATE_FORMAT})")
        return data

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.data["wall_seconds"] = self.wall_before + time.perf_counter() - self.started
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=1)
        os.replace(tmp, self.path)

    def run_flags(self, section: str, key: str) -> Dict[str, bool]:
        """resume / overwrite for a sub-run: a started one resumes; a new one starts afresh, over an
        old checkpoint only when this experiment began with --overwrite (else that is an error)."""
        if self.data[section].get(key, {}).get("started"):
            return dict(resume=True, overwrite=False)
        return dict(resume=False, overwrite=bool(self.data["replace_old_runs"]))

    def mark(self, section: str, key: str, **values) -> None:
        self.data[section].setdefault(key, {}).update(values)
        self.save()

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.data["seconds"][stage] = self.data["seconds"].get(stage, 0.0) + seconds
        self.save()


# ----------------------------------------------------------------------------- training runs
@dataclass
class Run:
    input: str
    variant: str        # the first variant with this architecture
    seed: int
    arch: str           # genotype JSON with its family

    @property
    def key(self) -> str:
        return f"{self.input}-{self.variant}/seed{self.seed}"


def train_config(cfg: ExperimentConfig, run: Run, flags: Dict[str, bool], progress: bool) -> TrainConfig:
    return TrainConfig(arch=run.arch, out=os.path.join(cfg.out, "train", run.key), data=cfg.data,
                       epochs=cfg.train_epochs, batch_size=cfg.train_batch_size, channels=cfg.train_channels,
                       layers=cfg.train_layers, lr=cfg.lr, drop_path=cfg.drop_path, cutout=cfg.cutout,
                       auxiliary_weight=cfg.auxiliary_weight, train_limit=cfg.train_limit, seed=run.seed,
                       device=cfg.device, eval_every=cfg.eval_every, progress=progress, **flags)


def train_one(train_cfg: Dict, threads: int = 0) -> Dict[str, float]:
    """One training run (in this process or a worker's); its log goes to OUT/train.log."""
    from .train import Trainer
    if threads:
        torch.set_num_threads(threads)
    tcfg = TrainConfig(**train_cfg)
    os.makedirs(tcfg.out, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(tcfg.out, "train.log"), "a") as log:
        Trainer(tcfg, log=lambda line: print(line, file=log, flush=True)).run()
    # From the metrics: a run stopped after its last checkpoint, then resumed, trains nothing more.
    from .experiment_report import read_metrics
    final = [r for r in read_metrics(tcfg.out) if r["epoch"] == tcfg.epochs - 1]
    return {"test_acc": float(final[-1]["test_acc"]) if final else float("nan"),
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the experiment
class Experiment:
    def __init__(self, cfg: ExperimentConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.inputs = parse_inputs(cfg)
        self.variants = parse_variants(cfg)
        self.policies = (["gcn"] if set(self.variants) & {"argmax", "best-of-k", "random"} else []) + \
                        (["lstm"] if "lstm" in self.variants else [])
        self.families = list(dict.fromkeys(i.family.name for i in self.inputs))
        self.given = self._given_checkpoints()

    # -------------------------------------------------------------- searches
    def _given_checkpoints(self) -> Dict[str, str]:
        given = {}
        for path in [p.strip() for p in self.cfg.checkpoints.split(",") if p.strip()]:
            saved = from_saved(SearchConfig, ckpt.load(path)["config"])
            if saved.transitions != self.cfg.transitions:
                raise ExperimentError(f"{path} was searched with {saved.transitions} transitions, the experiment "
                                      f"uses {self.cfg.transitions} (--transitions)")
            key = f"{searched_family(saved.family, saved.transitions).name}-{saved.policy}"
            if key in given:
                raise ExperimentError(f"--checkpoints: {given[key]} and {path} are both a {key} search")
            given[key] = path
        if given:
            missing = [f"{f}-{p}" for f in self.families for p in self.policies if f"{f}-{p}" not in given]
            if missing:
                raise ExperimentError(f"--checkpoints has no search for {', '.join(missing)} (needed by --inputs "
                                      f"and --variants); add one, or drop those inputs or variants")
        return given

    def search_config(self, family: str, policy: str, **flags) -> SearchConfig:
        cfg = self.cfg
        return SearchConfig(out=os.path.join(cfg.out, "search", f"{family}-{policy}"), data=cfg.data,
                            family=family.rstrip("+"), transitions=cfg.transitions, epochs=cfg.search_epochs,
                            batch_size=cfg.search_batch_size, channels=cfg.search_channels,
                            layers=cfg.search_layers, train_limit=cfg.search_train_limit, policy=policy,
                            seed=cfg.search_seed, device=cfg.device, threads=cfg.threads,
                            progress=cfg.progress, **flags)

    def run_searches(self, state: State) -> Dict[str, str]:
        """Search (or resume) every family x policy needed; returns their checkpoints."""
        from .policy_file import export_policy
        from .search import search
        paths = {}
        for family in self.families:
            for policy in self.policies:
                key = f"{family}-{policy}"
                if key in self.given:
                    paths[key] = self.given[key]
                    continue
                scfg = self.search_config(family, policy, **state.run_flags("searches", key))
                paths[key] = os.path.join(scfg.out, "checkpoint.pt")
                if state.data["searches"].get(key, {}).get("done"):
                    continue
                self.log(f"== search {key} ({scfg.epochs} epochs, C = {scfg.channels}, {scfg.layers} cells) "
                         f"-> {scfg.out}")
                state.mark("searches", key, started=True, checkpoint=paths[key])
                start = time.perf_counter()
                search(scfg, log=self.log)
                state.add_seconds("search", time.perf_counter() - start)
                policy_path = os.path.join(self.cfg.out, "policies",
                                           f"{family}.pt" if policy == "gcn" else f"{family}-{policy}.pt")
                export_policy(paths[key], policy_path, note=f"natfast experiment {self.cfg.out}")
                state.mark("searches", key, done=True, policy_file=policy_path)
        return paths

    # -------------------------------------------------------------- architectures
    def derive_architectures(self, checkpoints: Dict[str, str]) -> List[dict]:
        """Every input's variants: genotype, edges changed, costs; identical ones share a run."""
        from .derive import load_search, transform_argmax, transform_best_of_k, validation_loader
        from .flops import count
        cfg = self.cfg
        loaded, loaders, rows = {}, {}, []
        for index, inp in enumerate(self.inputs):
            fam = inp.family.name
            for policy in self.policies:
                if f"{fam}-{policy}" not in loaded:
                    loaded[f"{fam}-{policy}"] = load_search(checkpoints[f"{fam}-{policy}"], cfg.device)
            archs: Dict[str, Tuple[Genotype, dict]] = {"original": (inp.genotype, {})}
            if "gcn" in self.policies:
                result = loaded[f"{fam}-gcn"]
                archs["argmax"] = (transform_argmax(result.policy, inp.genotype), {})
                if "best-of-k" in self.variants:
                    if fam not in loaders:
                        loaders[fam] = validation_loader(result.config, cfg.data)
                    best = transform_best_of_k(result, inp.genotype, cfg.candidates, cfg.input_seed + index,
                                               loaders[fam], cfg.eval_batches)
                    archs["best-of-k"] = (best.best, {"validation_input": best.beta_score,
                                                      "validation_candidates": best.scores})
                reference = next((v for v in self.variants if v in NAT_VARIANTS), "argmax")
                counts = changed_edges(inp.genotype, archs[reference][0])
                gen = torch.Generator().manual_seed(cfg.input_seed * 1_000_003 + index)
                archs["random"] = (random_transformation(inp.genotype, counts, result.policy.rule,
                                                         result.policy.primitives, gen),
                                   {"matches": reference})
            if "lstm" in self.policies:
                archs["lstm"] = (transform_argmax(loaded[f"{fam}-lstm"].policy, inp.genotype), {})
            variants, seen, costs = {}, {}, {}
            for variant in self.variants:
                genotype, extra = archs[variant]
                text = to_json(genotype, inp.family)
                if text not in costs:   # each network's cost once: costing at C = 36, 20 cells takes seconds
                    costs[text] = (count(genotype, inp.family, cfg.train_channels, cfg.train_layers),
                                   count(genotype, inp.family))
                trained, paper = costs[text]
                variants[variant] = {"genotype": text, "changed": list(changed_edges(inp.genotype, genotype)),
                                     "params": trained.params, "madds": trained.madds,
                                     "paper_params": paper.params, "paper_madds": paper.madds,
                                     "run": seen.setdefault(text, variant), **extra}
            rows.append({"name": inp.name, "family": fam, "variants": variants})
            self.log(f"{inp.name}: " + "; ".join(
                f"{v} {d['changed'][0]}+{d['changed'][1]} edges changed, {d['params'] / 1e6:.3f}M params"
                + (f" (= {d['run']})" if d["run"] != v else "") for v, d in variants.items()))
        return rows

    def architectures(self, state: State, checkpoints: Dict[str, str]) -> List[dict]:
        path = os.path.join(self.cfg.out, ARCHS_FILE)
        if state.data["architectures"] and os.path.exists(path):
            with open(path) as fh:
                return json.load(fh)["inputs"]
        start = time.perf_counter()
        rows = self.derive_architectures(checkpoints)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"inputs": rows}, fh, indent=1)
        os.replace(tmp, path)
        self.draw_cells(rows)
        state.data["architectures"] = True
        state.add_seconds("architectures", time.perf_counter() - start)
        return rows

    def draw_cells(self, rows: List[dict]) -> None:
        from .draw import draw
        for row in rows:
            shown = [(v, d) for v, d in row["variants"].items() if d["run"] == v]
            archs = [(f"{row['name']} {v}",) + load_arch(d["genotype"]) for v, d in shown]
            costs = [f"{d['params'] / 1e6:.3f}M params, {d['madds'] / 1e6:.1f}M MAdds as trained" for _, d in shown]
            draw(archs, os.path.join(self.cfg.out, "cells", f"{row['name']}.png"), costs)

    # -------------------------------------------------------------- training
    def runs(self, rows: List[dict]) -> List[Run]:
        """Seed 0 of everything first, so a partial experiment already compares every variant."""
        runs = []
        for seed in range(self.cfg.seeds):
            for row in rows:
                for variant, d in row["variants"].items():
                    if d["run"] == variant:
                        runs.append(Run(row["name"], variant, seed, d["genotype"]))
        return runs

    def train_all(self, state: State, rows: List[dict], on_done: Callable[[], None]) -> None:
        cfg = self.cfg
        todo = [r for r in self.runs(rows) if not state.data["runs"].get(r.key, {}).get("done")]
        total = len(self.runs(rows))
        done_count = total - len(todo)
        if not todo:
            return
        self.log(f"== training {len(todo)} of {total} runs ({cfg.train_epochs} epochs, C = {cfg.train_channels}, "
                 f"{cfg.train_layers} cells), {cfg.workers} at a time -> {os.path.join(cfg.out, 'train')}")

        def finished(run: Run, result: Dict[str, float]) -> None:
            nonlocal done_count
            done_count += 1
            state.mark("runs", run.key, done=True, **result)
            state.add_seconds("training", result["seconds"])
            self.log(f"[{done_count}/{total}] {run.key}: test accuracy {result['test_acc']:.4f} "
                     f"({result['seconds']:.0f} s)")
            on_done()

        if cfg.workers == 1:
            for run in todo:
                tcfg = train_config(cfg, run, state.run_flags("runs", run.key), cfg.progress)
                state.mark("runs", run.key, started=True)
                finished(run, train_one(to_dict(tcfg)))
            return
        threads = max(1, (cfg.threads or torch.get_num_threads()) // cfg.workers)
        import multiprocessing
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {}
            for run in todo:
                tcfg = train_config(cfg, run, state.run_flags("runs", run.key), False)
                state.mark("runs", run.key, started=True)
                futures[pool.submit(train_one, to_dict(tcfg), threads)] = run
            try:
                from concurrent.futures import as_completed
                for future in as_completed(futures):
                    finished(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    # -------------------------------------------------------------- the whole
    def run(self) -> dict:
        cfg = self.cfg
        _require_matplotlib()
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict:
        from .data import load_cifar10
        from .experiment_report import write_report
        cfg = self.cfg
        load_cifar10(cfg.data, "test")      # a missing data folder stops it before anything is written
        state = State.start(cfg)
        state.data["finished"] = False
        state.save()
        self.log(f"experiment {cfg.out}: inputs {', '.join(i.name for i in self.inputs)}; variants "
                 f"{', '.join(self.variants)}; {cfg.seeds} seeds; data {cfg.data or 'embedded sample'}")
        checkpoints = self.run_searches(state)
        rows = self.architectures(state, checkpoints)

        def report() -> dict:
            return write_report(cfg, rows, state.data, self.searches_summary(checkpoints))

        last_report = [0.0]

        def report_now_and_then() -> None:
            # The report of the runs so far, at most every 5 minutes (its plots take seconds).
            if time.perf_counter() - last_report[0] > 300:
                report()
                last_report[0] = time.perf_counter()

        self.train_all(state, rows, report_now_and_then)
        state.data["finished"] = True
        state.save()
        summary = report()
        self.log(f"results: {os.path.join(cfg.out, 'results.md')}")
        return summary

    def searches_summary(self, checkpoints: Dict[str, str]) -> Dict[str, dict]:
        out = {}
        for key, path in checkpoints.items():
            metrics = os.path.join(os.path.dirname(path), "metrics.jsonl")
            out[key] = {"checkpoint": path, "given": key in self.given,
                        "last_epoch": _last_epoch_means(metrics) if os.path.exists(metrics) else {}}
        return out


def _last_epoch_means(path: str) -> Dict[str, float]:
    """Means of the last epoch's theta phase of a search's metrics (reward, accuracies)."""
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    theta = [r for r in rows if r.get("phase") == "theta"]
    if not theta:
        return {}
    last = [r for r in theta if r["epoch"] == theta[-1]["epoch"]]
    keys = ("reward", "beta_acc", "alpha_acc", "entropy")
    return {"epoch": last[0]["epoch"], **{k: sum(r[k] for r in last) / len(last) for k in keys}}


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ExperimentError("natfast experiment draws its plots with matplotlib: pip install matplotlib") from None


def experiment(cfg: Optional[ExperimentConfig] = None, log: Callable[[str], None] = print, **overrides) -> dict:
    """Run (or resume) an experiment; returns the summary written to OUT/results.json."""
    cfg = cfg or ExperimentConfig(**overrides)
    if cfg.estimate:
        from .experiment_estimate import estimate
        return estimate(Experiment(cfg, log), log)
    return Experiment(cfg, log).run()
