"""The progress of a search as the authors show it: every k epochs (--show-every) the current
policy transforms named input architectures (--show-archs); each result goes to metrics.jsonl (a
record with "event": "transform") and is drawn beside its input into OUT/transforms/.

The authors' train_search.py calls NASNetwork.test every --test_freq epochs (NAT 10, NAT++ 4): the
best of 10 sampled transformations of a random input, logged and drawn. natfast shows named inputs,
so that one run's snapshots can be compared epoch to epoch.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Tuple

from .data import BatchLoader
from .flops import count
from .genotype import Family, Genotype, GenotypeError, format_genotype, load_arch, validate

DEFAULT_ARCHS = ("DARTS", "ENAS", "ResBlock", "VGG", "Mobilenetv2")
CANDIDATES = 10   # best-of-k shows, as the authors' --n_archs


def show_archs(spec: str, family: Family) -> List[Tuple[str, Genotype]]:
    """The architectures named (or given as files) in the comma-separated `spec`, each checked
    against the searched family; with an empty spec, those of DEFAULT_ARCHS that fit it."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    archs = []
    if not names:
        for name in DEFAULT_ARCHS:
            try:
                archs.append((name, validate(load_arch(name)[0], family)))
            except GenotypeError:
                continue
        if not archs:
            raise ValueError(f"none of {', '.join(DEFAULT_ARCHS)} fits the searched family {family.name}; "
                             f"name the architectures to show with --show-archs")
        return archs
    for name in names:
        try:
            archs.append((name, validate(load_arch(name)[0], family)))
        except GenotypeError as exc:
            raise GenotypeError(f"--show-archs {name}: a policy searched on {family.name} cannot transform it: "
                                f"{exc}") from None
    return archs


class TransformSnapshots:
    def __init__(self, cfg, family: Family, log: Callable[[str], None] = print):
        self.cfg, self.family, self.log = cfg, family, log
        self.archs = show_archs(cfg.show_archs, family)
        self.folder = os.path.join(cfg.out, "transforms")
        self.input_costs: Dict[str, object] = {}
        self.can_draw = True

    def due(self, epochs_done: int) -> bool:
        return epochs_done % self.cfg.show_every == 0

    def _transform(self, searcher, beta: Genotype, epoch: int) -> Genotype:
        from .derive import SearchResult, transform_argmax, transform_best_of_k
        if self.cfg.show_method == "argmax":
            return transform_argmax(searcher.policy, beta)
        theta = searcher.theta_loader
        loader = BatchLoader(theta.dataset, theta.indices, self.cfg.batch_size, shuffle=False, augment=False,
                             drop_last=False)
        result = SearchResult(self.cfg, self.family, searcher.supernet, searcher.policy)
        best = transform_best_of_k(result, beta, CANDIDATES, seed=self.cfg.seed * 100_003 + epoch, loader=loader,
                                   max_batches=self.cfg.show_batches, keep_input=False)
        return best.best

    def take(self, searcher, metrics_file) -> List[dict]:
        """Transform every shown architecture with the policy as it is now (after the epoch that
        just ended), log and draw each; returns the records."""
        epoch = searcher.position.epoch - 1
        records = []
        for name, beta in self.archs:
            alpha = self._transform(searcher, beta, epoch)
            if name not in self.input_costs:
                self.input_costs[name] = count(beta, self.family)
            before, after = self.input_costs[name], count(alpha, self.family)
            changed = sum(a != b for cell in ("normal", "reduce")
                          for a, b in zip(getattr(alpha, cell), getattr(beta, cell)))
            png = self._draw(name, epoch, beta, alpha, before, after)
            record = dict(event="transform", epoch=epoch, step=searcher.position.step, arch=name,
                          method=self.cfg.show_method, input=format_genotype(beta), transformed=format_genotype(alpha),
                          changed=changed, input_params=before.params, input_madds=before.madds,
                          params=after.params, madds=after.madds, png=png)
            metrics_file.write(json.dumps(record) + "\n")
            records.append(record)
            self.log(f"epoch {epoch} {self.cfg.show_method} transformation of {name}: {changed} edges changed; "
                     f"{before} -> {after}")
        metrics_file.flush()
        return records

    def _draw(self, name, epoch, beta, alpha, before, after):
        if not self.can_draw:
            return None
        from .draw import draw
        path = os.path.join(self.folder, f"epoch{epoch:03d}_{os.path.basename(name).replace('.', '_')}.png")
        try:
            return draw([(name, beta, self.family), (f"NAT({name}), epoch {epoch}", alpha, self.family)], path,
                        [str(before), str(after)])
        except RuntimeError as exc:   # no matplotlib: log the transformations, draw nothing
            self.log(f"transformations are not drawn: {exc}")
            self.can_draw = False
            return None
