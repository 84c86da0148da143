"""Did the search learn? Scores, with a search checkpoint's shared weights, input architectures and
their transformations by the trained policy and by uniformly random allowed transformations (the
paper's ablation baseline), on held-out images (the CIFAR-10 test split, never used by the search).

    python bench/search_quality.py --checkpoint runs/search/checkpoint.pt [--data DIR] \
        [--random-inputs 4] [--samples 10] [--images 2000] [--json OUT]

For each input architecture (the named ones of the searched family, plus random ones drawn as the
search draws beta): the input's accuracy, the policy's argmax transformation, the mean and best of
K policy samples and of K random transformations, and the argmax's params and MAdds against the
input's (the evaluation network: 20 cells, C = 36). A policy that learned something scores above
the random transformations; NAT's claim is that it also scores at or above the input while being
smaller. Accuracies under shared weights rank architectures; they are not trained-from-scratch
accuracies.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from natfast.data import BatchLoader, load_cifar10
from natfast.derive import load_search, score_architectures, transform_argmax
from natfast.flops import count
from natfast.genotype import format_genotype
from natfast.policy import make_policy
from natfast.sampler import sample_genotype
from natfast.snapshots import show_archs


def named_inputs(family):
    """The named input architectures that fit the searched family (those a search shows)."""
    return dict(show_archs("", family))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", help="cifar-10-batches-py folder (default: the embedded sample's test images)")
    parser.add_argument("--random-inputs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10, help="K transformations of each kind per input")
    parser.add_argument("--images", type=int, default=2000, help="test images scored (0: all)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the full results here")
    args = parser.parse_args()

    result = load_search(args.checkpoint, args.device)
    test = load_cifar10(args.data, "test")
    n = len(test) if args.images <= 0 else min(args.images, len(test))
    # A random subset in random order: the supernet's BN uses each batch's statistics, so every
    # batch must mix the classes (the offline test split is stored sorted by class).
    indices = np.random.default_rng(args.seed).permutation(len(test))[:n]
    loader = BatchLoader(test, indices, args.batch_size, shuffle=False, augment=False, drop_last=False)
    random_policy = make_policy("random", result.policy.primitives, result.policy.rule)
    gen = torch.Generator().manual_seed(args.seed)
    inputs = named_inputs(result.family)
    for i in range(args.random_inputs):
        inputs[f"random{i}"] = sample_genotype(result.family, gen)

    rows = []
    start = time.perf_counter()
    for name, beta in inputs.items():
        with torch.no_grad():
            learned = [result.policy.to_genotype(beta, s.targets)
                       for s in result.policy.sample([beta.normal, beta.reduce], gen, args.samples)]
            random = [random_policy.to_genotype(beta, s.targets)
                      for s in random_policy.sample([beta.normal, beta.reduce], gen, args.samples)]
        argmax = transform_argmax(result.policy, beta)
        scores = score_architectures(result.supernet, [beta, argmax] + learned + random, loader)
        k = args.samples
        learned_scores, random_scores = scores[2:2 + k], scores[2 + k:]
        cost_beta, cost_alpha = count(beta, result.family), count(argmax, result.family)
        rows.append({
            "input": name, "beta_acc": scores[0], "argmax_acc": scores[1],
            "policy_mean_acc": statistics.mean(learned_scores), "policy_best_acc": max(learned_scores),
            "random_mean_acc": statistics.mean(random_scores), "random_best_acc": max(random_scores),
            "beta_params_m": cost_beta.params / 1e6, "argmax_params_m": cost_alpha.params / 1e6,
            "beta_madds_m": cost_beta.madds / 1e6, "argmax_madds_m": cost_alpha.madds / 1e6,
            "argmax": format_genotype(argmax)})
    seconds = time.perf_counter() - start

    print(f"checkpoint {args.checkpoint}; {n} test images; K = {args.samples}; {seconds:.0f} s")
    print("| input | beta | argmax | policy mean / best | random mean / best | params M beta -> argmax |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['beta_acc']:.3f} | {r['argmax_acc']:.3f} | "
              f"{r['policy_mean_acc']:.3f} / {r['policy_best_acc']:.3f} | "
              f"{r['random_mean_acc']:.3f} / {r['random_best_acc']:.3f} | "
              f"{r['beta_params_m']:.2f} -> {r['argmax_params_m']:.2f} |")
    for key in ("argmax_acc", "policy_mean_acc", "random_mean_acc"):
        gain = statistics.mean(r[key] - r["beta_acc"] for r in rows)
        print(f"mean {key} - beta_acc over {len(rows)} inputs: {gain:+.4f}")
    for r in rows:
        print(f"{r['input']} argmax: {r['argmax']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"checkpoint": args.checkpoint, "images": n, "samples": args.samples,
                       "seconds": seconds, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
