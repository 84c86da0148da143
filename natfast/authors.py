"""The NAT authors' settings as presets (`--preset authors`): everything in which natfast's
defaults differ from their code (github.com/guoyongcs/NAT for NAT, github.com/guoyongcs/NATv2 for
NAT++), each also a flag of its own. docs/authors.md gives every difference, why natfast's
default is what it is, and the flag that restores the authors' behaviour.
"""
from __future__ import annotations

from typing import Any, Dict

# Where in their code each value comes from (train_search.py / search_model.py / nat_learner.py).
_SEARCH_COMMON: Dict[str, Any] = dict(
    grad_clip=0.0,               # NASNetwork.step: loss.backward(), then the optimizer step, no clip
    augment_theta=True,          # valid_arch_queue reads train_data, built with the train transform
    prob_epsilon=1e-5,           # ArchTransformer.forward: probs = softmax(logits) + 1e-5
    embedding_size=100,          # --edge_hid 100 (node embeddings 2 x 100)
    feature_size=1024,           # --transformer_nfeat 1024 (emb_attn: 200 -> 1024)
    hidden_size=100,             # --transformer_nhid 100 (gc1 1024 -> 100, gc2 100 -> 100)
    policy_init="pygcn",         # pygcn GraphConvolution.reset_parameters, nn.Embedding's N(0, 1)
    adjacency="raw",             # utils.parse_arch; --transformer_normalize off
    baseline_update="advantage",  # Transformer.update_baseline(reward), reward = R - baseline
    show_method="best-of-k",     # NASNetwork.test: best of --n_archs 10 samples
    show_batches=0,              # ... scored on the whole queue
)


def search_preset(transitions: str = "nat") -> Dict[str, Any]:
    """The authors' search: NAT (guoyongcs/NAT) for the "nat" rule, NAT++ (guoyongcs/NATv2) for
    "natpp". They differ in the policy head (NAT: three relative logits; NAT++: a logit per op,
    masked by the transitions), the epochs (100; 200) and how often progress is shown (--test_freq
    10; 4)."""
    if transitions not in ("nat", "natpp"):
        raise ValueError(f"unknown transition rule {transitions!r}; rules: nat, natpp")
    nat = transitions == "nat"
    return dict(_SEARCH_COMMON, policy_head="relative" if nat else "masked", epochs=100 if nat else 200,
                show_every=10 if nat else 4)


# derive.py: NASNetwork.derive_optimized_arch with 10 candidates keeps the best sample, whatever the
# input scores; NAT scores on the policy's training split with the train transform (crop + flip),
# NAT++ on the CIFAR-10 test set ("authors" picks by the checkpoint's rule). MAdds as their
# utils.compute_flops counts them.
TRANSFORM_PRESET: Dict[str, Any] = dict(method="best-of-k", candidates=10, keep_input=False, score_data="authors",
                                        madds="authors")
