"""`natfast experiment --estimate`: how long the experiment would take here, from a few timed
steps of each stage at the experiment's own scale (search steps of each kind, best-of-K scoring
batches, training steps and test batches of every input), projected to the whole run.

Two projections: from the wall time measured now, and for an idle machine, from the CPU time each
step took divided by the threads it ran on (on a machine shared with other jobs the wall time is
inflated by them; the CPU time much less). Training is projected from the inputs themselves: under
NAT's and NAT++'s transitions a transformed op never costs more than its source, so the variants'
runs cost about their input's or less (approximately: a skip connection replacing a pool on a
reduction edge becomes a FactorizedReduce, which costs more; identical variants are trained once,
which this ignores)."""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from .experiment import Experiment
from .genotype import to_json

def _time(fn: Callable[[], object], repeats: int) -> Dict[str, float]:
    """Seconds per call, wall and CPU (all threads of this process), after one warm-up call."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return {"wall": (time.perf_counter() - wall) / repeats, "cpu": (time.process_time() - cpu) / repeats}


def _endless(loader):
    """A loader's batches, epoch after epoch (a tiny loader has fewer batches than the steps timed)."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _stage(name: str, calls: float, per_call: Dict[str, float], threads: int, parallel: int = 1) -> dict:
    return {"stage": name, "calls": calls, "wall_per_call": per_call["wall"], "cpu_per_call": per_call["cpu"],
            "now_s": calls * per_call["wall"] / parallel,
            "idle_s": calls * per_call["cpu"] / max(threads, 1) / parallel}


def estimate_searches(exp: Experiment, repeats: int) -> List[dict]:
    from .search import Searcher, step_generator
    cfg, stages = exp.cfg, []
    for family in exp.families:
        for policy in exp.policies:
            key = f"{family}-{policy}"
            if key in exp.given:
                continue
            searcher = Searcher(exp.search_config(family, policy, resume=False, overwrite=False), log=lambda _: None)
            x_w, y_w = next(iter(searcher.w_loader.epoch(0)))
            x_t, y_t = next(iter(searcher.theta_loader.epoch(0)))
            dev = searcher.device
            step = iter(range(10**6))
            t_w = _time(lambda: searcher.update_w(x_w.to(dev), y_w.to(dev), step_generator(0, next(step), 0)), repeats)
            t_t = _time(lambda: searcher.update_theta(x_t.to(dev), y_t.to(dev), step_generator(0, next(step), 0)),
                        repeats)
            threads = torch.get_num_threads()
            stages.append(_stage(f"search {key}: update w", cfg.search_epochs * len(searcher.w_loader), t_w, threads))
            stages.append(_stage(f"search {key}: update theta", cfg.search_epochs * len(searcher.theta_loader),
                                 t_t, threads))
            if policy == "gcn" and "best-of-k" in exp.variants:
                stages.append(_estimate_best_of_k(exp, searcher, family, repeats))
    return stages


def _estimate_best_of_k(exp: Experiment, searcher, family: str, repeats: int) -> dict:
    from .derive import validation_loader
    from .search import score_batch
    cfg = exp.cfg
    gen = torch.Generator().manual_seed(0)
    inputs = [i for i in exp.inputs if i.family.name == family]
    beta = inputs[0].genotype
    with torch.no_grad():
        samples = searcher.policy.sample([beta.normal, beta.reduce], gen, cfg.candidates)
    archs = [beta] + [searcher.policy.to_genotype(beta, s.targets) for s in samples]
    loader = validation_loader(searcher.cfg, cfg.data)
    x, y = next(iter(loader.epoch(0)))
    dev = searcher.device
    per_batch = _time(lambda: score_batch(searcher.supernet, x.to(dev), y.to(dev), archs), repeats)
    batches = min(cfg.eval_batches, len(loader)) if cfg.eval_batches else len(loader)
    return _stage(f"best-of-{cfg.candidates} scoring, {family} ({len(inputs)} inputs)", batches * len(inputs),
                  per_batch, torch.get_num_threads())


def estimate_training(exp: Experiment, repeats: int) -> List[dict]:
    """Each input's run as the experiment makes it (its Trainer: data, augmentation, clipping),
    a few steps and test batches timed, plus building it (reading the data, the network)."""
    from .experiment import Run, train_config
    from .train import Trainer
    cfg, stages = exp.cfg, []
    threads_all = cfg.threads or torch.get_num_threads()
    threads = max(1, threads_all // cfg.workers)
    torch.set_num_threads(threads)
    evals = len([e for e in range(cfg.train_epochs) if (e + 1) % cfg.eval_every == 0 or e + 1 == cfg.train_epochs])
    runs_per_input = len(exp.variants) * cfg.seeds
    for inp in exp.inputs:
        run = Run(inp.name, "original", 0, to_json(inp.genotype, inp.family))
        tcfg = train_config(cfg, run, dict(resume=False, overwrite=False), progress=False)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer = Trainer(tcfg, log=lambda _: None)
        build = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        model, batches = trainer.model, _endless(trainer.train_loader)
        model.drop_path_prob = cfg.drop_path / 2

        def train_step():
            x, y = next(batches)
            model.train()
            logits, aux = model.forward_with_aux(x.to(trainer.device))
            loss = F.cross_entropy(logits, y.to(trainer.device))
            if aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y.to(trainer.device))
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            trainer.optimizer.step()
            loss.item()

        test_batches = _endless(trainer.test_loader)

        def eval_batch():
            model.eval()
            x, y = next(test_batches)
            with torch.no_grad():
                (model(x.to(trainer.device)).argmax(1) == y.to(trainer.device)).sum().item()

        t_step, t_eval = _time(train_step, repeats), _time(eval_batch, max(1, repeats // 2))
        steps = cfg.train_epochs * len(trainer.train_loader)
        one_run = {k: build[k] + steps * t_step[k] + evals * len(trainer.test_loader) * t_eval[k] for k in t_step}
        stages.append(_stage(f"training {inp.name}: {runs_per_input} runs (bound)", runs_per_input, one_run,
                             threads, parallel=cfg.workers))
    torch.set_num_threads(threads_all)
    return stages


def estimate(exp: Experiment, log: Callable[[str], None] = print, repeats: int = 3) -> dict:
    cfg = exp.cfg
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    try:
        stages = estimate_searches(exp, repeats) + estimate_training(exp, repeats)
    finally:
        torch.set_num_threads(threads)
    total_now = sum(s["now_s"] for s in stages)
    total_idle = sum(s["idle_s"] for s in stages)
    per_worker = max(1, (cfg.threads or torch.get_num_threads()) // cfg.workers)
    log(f"estimate for {cfg.out} ({time.perf_counter() - start:.0f} s of timing; load average {load:.1f} on "
        f"{os.cpu_count()} CPUs; {cfg.workers} training worker(s) x {per_worker} thread(s))")
    log(f"{'stage':58s} {'calls':>9s} {'s/call now':>10s} {'cpu s/call':>10s} {'now min':>8s} {'idle min':>8s}")
    for s in stages:
        log(f"{s['stage'][:58]:58s} {s['calls']:9.0f} {s['wall_per_call']:10.3f} {s['cpu_per_call']:10.3f} "
            f"{s['now_s'] / 60:8.1f} {s['idle_s'] / 60:8.1f}")
    log(f"{'total':58s} {'':9s} {'':10s} {'':10s} {total_now / 60:8.1f} {total_idle / 60:8.1f}")
    return {"stages": stages, "total_now_s": total_now, "total_idle_s": total_idle, "load_average": load}
