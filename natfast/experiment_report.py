"""The report of `natfast experiment`: results.json (every number), results.md (the tables),
accuracy_vs_madds.png and training_curves.png, written from the training runs' metrics. Runs not
finished yet are left out (the table says how many seeds each mean has), so the report can be
written after every run."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Dict, List, Optional

from .experiment_config import ExperimentConfig

VARIANT_COLORS = {"original": "#495057", "argmax": "#1c7ed6", "best-of-k": "#2b8a3e",
                  "random": "#e8590c", "lstm": "#9c36b5"}


def read_metrics(folder: str) -> List[dict]:
    """A training run's per-epoch records; a resumed run may repeat an epoch: the last one counts."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_epoch: Dict[int, dict] = {}
    with open(path) as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _spread(values: List[float]) -> dict:
    return {"mean": statistics.mean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values) if values else None, "max": max(values) if values else None}


def collect(cfg: ExperimentConfig, rows: List[dict], state: dict) -> dict:
    """Per input and variant: each finished seed's final test accuracy and curves, their mean and
    spread; per variant: the paired difference to the original, over inputs."""
    inputs = []
    for row in rows:
        variants = {}
        for variant, d in row["variants"].items():
            seeds, curves = [], []
            for seed in range(cfg.seeds):
                key = f"{row['name']}-{d['run']}/seed{seed}"
                if not state["runs"].get(key, {}).get("done"):
                    continue
                records = read_metrics(os.path.join(cfg.out, "train", key))
                final = [r for r in records if r["epoch"] == cfg.train_epochs - 1 and "test_acc" in r]
                if final:
                    seeds.append({"seed": seed, "test_acc": final[-1]["test_acc"]})
                    curves.append(records)
            accs = [s["test_acc"] for s in seeds]
            variants[variant] = {**{k: v for k, v in d.items() if k != "genotype"}, "genotype": d["genotype"],
                                 "seeds": seeds, "test_acc": _spread(accs), "curves": curves}
        inputs.append({"name": row["name"], "family": row["family"], "variants": variants})
    return {"inputs": inputs, "comparisons": _comparisons(inputs)}


def _paired(inputs: List[dict], variant: str, reference: str) -> Optional[dict]:
    """Per input, the mean over shared seeds of (variant - reference) test accuracy; then their mean
    and spread over inputs, how many inputs the variant is better / worse on, and the size ratios."""
    diffs, params, madds = [], [], []
    for inp in inputs:
        ref, var = inp["variants"].get(reference), inp["variants"].get(variant)
        if ref is None or var is None:
            continue
        r = {s["seed"]: s["test_acc"] for s in ref["seeds"]}
        pairs = [s["test_acc"] - r[s["seed"]] for s in var["seeds"] if s["seed"] in r]
        if pairs:
            diffs.append(statistics.mean(pairs))
        params.append(var["params"] / ref["params"])
        madds.append(var["madds"] / ref["madds"])
    if not params:
        return None
    return {"diff": _spread(diffs), "inputs": len(diffs), "better_on": sum(d > 0 for d in diffs),
            "worse_on": sum(d < 0 for d in diffs), "params_ratio": statistics.mean(params),
            "madds_ratio": statistics.mean(madds)}


def _comparisons(inputs: List[dict]) -> Dict[str, dict]:
    """Every variant against the original, and each policy's variants against the random one."""
    variants = list(dict.fromkeys(v for inp in inputs for v in inp["variants"]))
    pairs = [(v, "original") for v in variants if v != "original"]
    pairs += [(v, "random") for v in variants if v not in ("original", "random") and "random" in variants]
    out = {}
    for variant, reference in pairs:
        result = _paired(inputs, variant, reference)
        if result is not None:
            out[f"{variant} vs {reference}"] = result
    return out


# ----------------------------------------------------------------------------- markdown
def command_line(cfg: ExperimentConfig) -> str:
    """The `natfast experiment` command that gives this config (flags that differ from the defaults)."""
    parts = ["natfast experiment"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("resume", "overwrite", "progress", "estimate") or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            parts.append(f"{flag} {value}" if not isinstance(value, str) or value and " " not in value
                         else f"{flag} '{value}'")
    return " ".join(parts)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _acc_cell(v: dict) -> str:
    t = v["test_acc"]
    if t["mean"] is None:
        return "pending"
    each = ", ".join(f"{100 * s['test_acc']:.2f}" for s in v["seeds"])
    sd = f" ± {100 * t['sd']:.2f}" if t["sd"] is not None else ""
    return f"{100 * t['mean']:.2f}{sd} ({each})"


def _random_note(summary: dict) -> str:
    matched = {v["random"].get("matches") for inp in summary["inputs"] for v in [inp["variants"]] if "random" in v}
    if not matched:
        return ""
    return (f" The random variant changes as many edges of each cell as NAT's {', '.join(sorted(matched))}, "
            f"each to an op the transition rule allows, uniformly at random.")


def markdown(cfg: ExperimentConfig, summary: dict, state: dict, searches: Dict[str, dict]) -> str:
    done = sum(1 for r in state["runs"].values() if r.get("done"))
    total = sum(cfg.seeds for inp in summary["inputs"] for v, d in inp["variants"].items() if d["run"] == v)
    hours = state.get("wall_seconds", 0.0) / 3600
    lines = [
        f"# natfast experiment: {cfg.out}", "",
        f"Command: `{command_line(cfg)}`", "",
        f"Data: {cfg.data or 'the embedded CIFAR-10 sample'}. Training runs finished: {done} of {total}"
        + ("" if state.get("finished") else " (the experiment is not finished)")
        + f". Wall time so far: {hours:.2f} h (search {state['seconds'].get('search', 0) / 60:.1f} min, "
        f"architectures {state['seconds'].get('architectures', 0) / 60:.1f} min, training runs "
        f"{state['seconds'].get('training', 0) / 60:.1f} min summed over {cfg.workers} worker(s)).", "",
        "## Searches", "",
        "| search | checkpoint | last epoch | reward acc(alpha) - acc(beta) | acc(beta) | acc(alpha) "
        "| policy entropy |",
        "|---|---|---|---|---|---|---|"]
    for key, s in searches.items():
        m = s["last_epoch"]
        cells = [str(m.get("epoch", "-"))] + [f"{m[k]:+.4f}" if k == "reward" else f"{m[k]:.4f}" if k in m else "-"
                                              for k in ("reward", "beta_acc", "alpha_acc", "entropy")]
        lines.append(f"| {key} | `{s['checkpoint']}`{' (given)' if s['given'] else ''} | " + " | ".join(cells) + " |")
    lines += [
        "", "Search columns: means over the last epoch's policy steps, accuracies on the search's "
        "validation batches with the shared weights.", "",
        "## Test accuracy after training from scratch", "",
        f"Each architecture trained {cfg.train_epochs} epochs at C = {cfg.train_channels}, {cfg.train_layers} "
        f"cells, batch {cfg.train_batch_size}, on {cfg.train_limit or 'all'} training images; test accuracy "
        f"(%) after the last epoch on the whole test split, mean ± sd over seeds (each seed's value in "
        f"brackets). Nothing is chosen on the test split: best-of-K chose on the search's validation split. "
        f"Params and MAdds of the network as trained, and at the paper's size (C = 36, 20 cells)."
        + _random_note(summary), "",
        "| input | variant | edges changed (normal + reduce) | test accuracy % | params M | MAdds M "
        "| params M / MAdds M at C = 36, 20 cells |",
        "|---|---|---|---|---|---|---|"]
    for inp in summary["inputs"]:
        for variant, v in inp["variants"].items():
            same = f" (= {v['run']})" if v["run"] != variant else ""
            lines.append(f"| {inp['name']} | {variant}{same} | {v['changed'][0]} + {v['changed'][1]} | "
                         f"{_acc_cell(v)} | {v['params'] / 1e6:.3f} | {v['madds'] / 1e6:.1f} | "
                         f"{v['paper_params'] / 1e6:.2f} / {v['paper_madds'] / 1e6:.0f} |")
    lines += [
        "", "## Paired comparisons", "",
        "A vs B: per input, the mean over seeds of (A - B) test accuracy, seed by seed; then the mean and sd "
        "of that over the inputs, and on how many inputs A is better or worse. Size ratios: A / B, averaged "
        "over inputs.", "",
        "| A vs B | inputs | accuracy difference, points | better on | worse on | params ratio | MAdds ratio |",
        "|---|---|---|---|---|---|---|"]
    for variant, g in summary["comparisons"].items():
        d = g["diff"]
        diff = "-" if d["mean"] is None else f"{100 * d['mean']:+.2f}" + (
            f" ± {100 * d['sd']:.2f}" if d["sd"] is not None else "")
        ratio = lambda r: "-" if r is None else f"{r:.3f}"  # noqa: E731
        lines.append(f"| {variant} | {g['inputs']} | {diff} | {g['better_on']} | {g['worse_on']} | "
                     f"{ratio(g['params_ratio'])} | {ratio(g['madds_ratio'])} |")
    best = [(inp["name"], inp["variants"]["best-of-k"]) for inp in summary["inputs"]
            if "best-of-k" in inp["variants"]]
    if best:
        images = f"{cfg.eval_batches * cfg.search_batch_size:,}" if cfg.eval_batches else "all the"
        lines += ["", "## Best-of-K on the validation split (shared weights)", "",
                  f"K = {cfg.candidates} transformations sampled from the policy, scored (accuracy %) with the "
                  f"search's shared weights on {images} images of its validation split (the part of the "
                  f"training set the policy was trained on, never the test split); the best is kept if it "
                  f"beats the input, else the input.",
                  "", "| input | input's score | candidates' scores | chosen |", "|---|---|---|---|"]
        for name, v in best:
            scores = v.get("validation_candidates", [])
            chosen = "the input (no candidate beat it)" if v["changed"] == [0, 0] else \
                f"the best candidate ({100 * max(scores):.2f})"
            lines.append(f"| {name} | {_pct(v.get('validation_input'))} | "
                         + ", ".join(f"{100 * s:.2f}" for s in scores) + f" | {chosen} |")
    lines += ["", "## Figures", "", "![accuracy against MAdds](accuracy_vs_madds.png)", "",
              "![training curves](training_curves.png)", "",
              "Cells of each input and its variants: " + ", ".join(
                  f"[{inp['name']}](cells/{inp['name']}.png)" for inp in summary["inputs"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def plot_accuracy_vs_madds(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "osD^vP*Xhp"
    seen_variants = set()
    for i, inp in enumerate(summary["inputs"]):
        # A variant identical to an earlier one (same run) would hide its point.
        points = [(v, d) for v, d in inp["variants"].items() if d["test_acc"]["mean"] is not None and d["run"] == v]
        orig = inp["variants"].get("original")
        for variant, d in points:
            x, y = d["madds"] / 1e6, 100 * d["test_acc"]["mean"]
            if orig is not None and orig["test_acc"]["mean"] is not None and variant != "original":
                ax.plot([orig["madds"] / 1e6, x], [100 * orig["test_acc"]["mean"], y], color="#ced4da", lw=0.8,
                        zorder=1)
            sd = d["test_acc"]["sd"]
            ax.errorbar(x, y, yerr=None if sd is None else 100 * sd, fmt=markers[i % len(markers)],
                        color=VARIANT_COLORS.get(variant, "k"), ms=7, capsize=3, zorder=2,
                        label=variant if variant not in seen_variants else None)
            seen_variants.add(variant)
        if points:
            ax.annotate(inp["name"], (points[0][1]["madds"] / 1e6, 100 * points[0][1]["test_acc"]["mean"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("MAdds (M) of the network as trained")
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_title("NAT vs original vs random transformation (grey lines: from each input)")
    ax.grid(alpha=0.3)
    if seen_variants:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_curve(curves: List[List[dict]], key: str):
    """Epochs where every seed has `key`, and the mean over seeds there."""
    if not curves:
        return [], []
    epochs = sorted(set.intersection(*[{r["epoch"] for r in c if key in r} for c in curves]))
    values = [statistics.mean(next(r[key] for r in c if r["epoch"] == e) for c in curves) for e in epochs]
    return [e + 1 for e in epochs], values


def plot_training_curves(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    n = len(summary["inputs"])
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.8 * n), squeeze=False)
    for row, inp in enumerate(summary["inputs"]):
        for col, (key, label) in enumerate((("test_acc", "test accuracy (%)"), ("train_loss", "training loss"))):
            ax = axes[row][col]
            for variant, d in inp["variants"].items():
                if d["run"] != variant:
                    continue
                x, y = _mean_curve(d["curves"], key)
                if x:
                    scale = 100 if key == "test_acc" else 1
                    ax.plot(x, [scale * v for v in y], marker="o" if len(x) < 30 else None, ms=3,
                            color=VARIANT_COLORS.get(variant, "k"), label=f"{variant} ({len(d['curves'])} seeds)")
            ax.set_title(f"{inp['name']}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(cfg: ExperimentConfig, rows: List[dict], state: dict, searches: Dict[str, dict]) -> dict:
    summary = collect(cfg, rows, state)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "results.md"), "w") as fh:
        fh.write(markdown(cfg, summary, state, searches))
    plot_accuracy_vs_madds(summary, os.path.join(cfg.out, "accuracy_vs_madds.png"))
    plot_training_curves(summary, os.path.join(cfg.out, "training_curves.png"))
    light = {**summary, "searches": searches, "command": command_line(cfg), "wall_seconds": state.get("wall_seconds"),
             "inputs": [{**inp, "variants": {v: {k: x for k, x in d.items() if k != "curves"}
                                             for v, d in inp["variants"].items()}} for inp in summary["inputs"]]}
    with open(os.path.join(cfg.out, "results.json"), "w") as fh:
        json.dump(light, fh, indent=1)
    return light
