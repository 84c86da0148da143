"""The transformation policies: masking, adjacency variants, REINFORCE on a toy reward."""
import math

import pytest
import torch

from natfast.genotype import FAMILIES, NATPP_PRIMITIVES, get_family, get_named
from natfast.policy import GCNPolicy, encode_cells, make_policy, normalize_adjacency
from natfast.sampler import sample_genotype
from natfast.transitions import is_valid_transformation


def test_adjacency_and_normalisation():
    beta, _ = get_named("DARTS")
    _, _, adj = encode_cells([beta.normal], FAMILIES["darts"].primitives)
    assert adj.shape == (1, 6, 6)
    assert adj[0, 2, 0] == 1 and adj[0, 2, 1] == 1 and adj[0, 5, 2] == 1 and adj[0, 0, 2] == 0
    norm = normalize_adjacency(adj)
    a = adj[0] + torch.eye(6)
    d = a.sum(1)
    torch.testing.assert_close(norm[0], a / torch.sqrt(d[:, None] * d[None, :]))


def test_authors_raw_adjacency_ignores_a_nodes_own_ops():
    """Without self-loops a node's own incoming ops never reach its logits (the authors' variant)."""
    torch.manual_seed(0)
    beta, _ = get_named("DARTS")
    raw = GCNPolicy(FAMILIES["darts"].primitives, adjacency="raw")
    changed = list(beta.normal)
    changed[6] = ("max_pool_3x3", 0, 5)        # change an op into node 5 (the last node)
    l1 = raw.edge_logits([beta.normal])
    l2 = raw.edge_logits([changed])
    torch.testing.assert_close(l1[0, 6:], l2[0, 6:])   # node 5's logits unchanged
    normalized = GCNPolicy(FAMILIES["darts"].primitives)
    normalized.load_state_dict(raw.state_dict())
    assert not torch.allclose(normalized.edge_logits([beta.normal])[0, 6:], normalized.edge_logits([changed])[0, 6:])


@pytest.mark.parametrize("kind", ["gcn", "lstm", "random"])
@pytest.mark.parametrize("rule", ["nat", "natpp"])
def test_sampled_transformations_are_always_allowed(kind, rule):
    family = get_family("darts", natpp=(rule == "natpp"))
    torch.manual_seed(0)
    policy = make_policy(kind, family.primitives, rule)
    gen = torch.Generator().manual_seed(0)
    betas = [sample_genotype(family, gen) for _ in range(25)]
    cells = [c for b in betas for c in (b.normal, b.reduce)]
    for sample in policy.sample(cells, gen, num_samples=20):
        for i, beta in enumerate(betas):
            alpha = policy.to_genotype(beta, sample.targets[2 * i: 2 * i + 2])
            assert is_valid_transformation(beta, alpha, rule, family.primitives)
    assert torch.isfinite(sample.log_prob).all() and (sample.entropy >= 0).all()


def test_policy_gradient_raises_probability_of_rewarded_transformation():
    """Toy reward: +1 when the first edge of the normal cell becomes skip_connect."""
    family = FAMILIES["darts"]
    torch.manual_seed(0)
    policy = GCNPolicy(family.primitives)
    opt = torch.optim.Adam(policy.parameters(), 3e-3)
    beta, _ = get_named("DARTS")
    skip = family.primitives.index("skip_connect")

    def p_skip():
        with torch.no_grad():
            return torch.softmax(policy.masked_logits([beta.normal])[0, 0], -1)[skip].item()

    before = p_skip()
    gen = torch.Generator().manual_seed(0)
    baseline = 0.0
    for _ in range(150):
        s = policy.sample([beta.normal], gen, num_samples=8)
        reward = torch.tensor([float(x.targets[0, 0] == skip) for x in s])
        log_prob = torch.stack([x.log_prob[0] for x in s])
        loss = -((reward - baseline) * log_prob).mean()
        baseline = 0.9 * baseline + 0.1 * reward.mean().item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = p_skip()
    assert before < 0.5 and after > 0.9, (before, after)


def test_argmax_is_deterministic_and_valid():
    family = FAMILIES["enas"]
    policy = GCNPolicy(family.primitives)
    beta, _ = get_named("ENAS")
    t1, t2 = policy.argmax([beta.normal, beta.reduce]), policy.argmax([beta.normal, beta.reduce])
    assert torch.equal(t1.targets, t2.targets)
    assert is_valid_transformation(beta, policy.to_genotype(beta, t1.targets), "nat", family.primitives)


def test_unknown_policy_and_adjacency_are_clear_errors():
    with pytest.raises(ValueError, match="unknown policy 'cnn'"):
        make_policy("cnn", NATPP_PRIMITIVES)
    with pytest.raises(ValueError, match="adjacency must be"):
        GCNPolicy(NATPP_PRIMITIVES, "natpp", adjacency="sym")


# ----------------------------------------------------------------------------- the authors' policy
AUTHORS_SIZES = dict(embedding_size=100, feature_size=1024, hidden_size=100, adjacency="raw", init="pygcn")


def authors_edge_terms(policy, cell, choices, eps=1e-5):
    """The authors' ArchTransformer.forward (guoyongcs/NAT search_model.py), restated on this
    policy's parameters: input-node embeddings and the two op embeddings of each node through one
    linear layer, pygcn's A (X W) + b twice with a ReLU between, the linear head viewed as three
    logits per edge, softmax + eps, log, entropy. Returns (sum log p of `choices`, entropy)."""
    index = {p: i for i, p in enumerate(policy.primitives)}
    ops = torch.tensor([index[op] for op, _, _ in cell])
    emb = policy.op_embedding(ops)
    x_hidden = torch.cat([policy.input_embedding, torch.cat([emb[0::2], emb[1::2]], dim=1)], dim=0)
    x = policy.project(x_hidden)
    n = len(cell) // 2 + 2
    adj = torch.zeros(n, n, dtype=x.dtype)
    for _, f, t in cell:
        adj[t, f] += 1
    h = torch.relu(adj @ (x @ policy.w1) + policy.b1)
    h = adj @ (h @ policy.w2) + policy.b2
    logits = policy.head(h[2:]).view(len(cell), 3)
    probs = torch.softmax(logits, dim=-1) + eps
    log_probs = torch.log(probs)
    return log_probs.gather(-1, choices.view(-1, 1)).sum(), -(log_probs * probs).sum()


@pytest.mark.parametrize("arch", ["DARTS", "ENAS", "VGG"])
def test_relative_head_with_the_authors_sizes_matches_their_computation(arch):
    beta, family = get_named(arch)
    torch.manual_seed(0)
    policy = GCNPolicy(family.primitives, "nat", head="relative", prob_epsilon=1e-5, **AUTHORS_SIZES).double()
    assert policy.w1.shape == (1024, 100) and policy.input_embedding.shape == (2, 200)
    assert policy.project.in_features == 200 and policy.head.out_features == 6
    choices = torch.randint(0, 3, (2, len(beta.normal)), generator=torch.Generator().manual_seed(1))
    got = policy.evaluate([beta.normal, beta.reduce], choices)
    for i, cell in enumerate((beta.normal, beta.reduce)):
        log_p, entropy = authors_edge_terms(policy, cell, choices[i])
        torch.testing.assert_close(got.log_prob[i], log_p, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.entropy[i], entropy, rtol=1e-10, atol=1e-10)
    # Choices map to ops as the authors' translate_arch does: null, the same op, skip.
    for i, cell in enumerate((beta.normal, beta.reduce)):
        for (op, _, _), c, t in zip(cell, choices[i].tolist(), got.targets[i].tolist()):
            assert policy.primitives[t] == ("null", op, "skip_connect")[c]


def test_raw_adjacency_counts_repeated_edges_and_normalised_does_not():
    enas, family = get_named("ENAS")     # node 2 has two edges from node 1
    _, _, adj = encode_cells([enas.normal], family.primitives)
    assert adj[0, 2, 1] == 2 and adj[0, 2, 0] == 0 and adj.sum() == len(enas.normal)
    norm = normalize_adjacency(adj)
    torch.testing.assert_close(norm, normalize_adjacency((adj > 0).float()))


def test_relative_head_entropy_is_over_three_choices_even_on_skip_edges():
    family = FAMILIES["darts"]
    skip_cell = [("skip_connect", 0, t) if i % 2 else ("null", 1, t) for i, t in enumerate([2, 2, 3, 3, 4, 4, 5, 5])]
    relative = make_policy("random", family.primitives, "nat", head="relative")
    masked = make_policy("random", family.primitives, "nat")
    tr_rel, tr_masked = relative.argmax([skip_cell]), masked.argmax([skip_cell])
    torch.testing.assert_close(tr_rel.entropy[0], torch.tensor(8 * math.log(3)))
    torch.testing.assert_close(tr_masked.entropy[0], torch.tensor(8 * math.log(2)))
    # Uniform choices: "same" and "skip" both keep a skip edge, so skip comes 2/3 of the time.
    samples = relative.sample([skip_cell], torch.Generator().manual_seed(0), num_samples=3000)
    targets = torch.stack([s.targets[0] for s in samples])          # (3000, 8)
    kept_skip = (targets[:, 1::2] == family.primitives.index("skip_connect")).float().mean()
    assert abs(kept_skip.item() - 2 / 3) < 0.02
    with pytest.raises(ValueError, match="relative head chooses among .*not 'natpp'"):
        make_policy("gcn", NATPP_PRIMITIVES, "natpp", head="relative")


def test_probability_epsilon_is_added_as_the_authors_do():
    """p + eps on each allowed target, not renormalised; sampling from the renormalised p + eps."""
    family = get_family("darts", natpp=True)
    torch.manual_seed(0)
    policy = make_policy("gcn", family.primitives, "natpp", prob_epsilon=1e-3).double()
    beta, _ = get_named("DARTS")
    logits, allowed, _ = policy._logits_and_mask([beta.normal])
    p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) + 1e-3 * allowed
    tr = policy.argmax([beta.normal])
    expected_entropy = -(p * torch.log(p.masked_fill(~allowed, 1.0))).sum()
    torch.testing.assert_close(tr.entropy[0], expected_entropy)
    torch.testing.assert_close(tr.log_prob[0], torch.log(p.max(-1).values).sum())
    # Every sample an allowed transformation; the empirical frequencies follow p / sum(p).
    samples = policy.sample([beta.normal], torch.Generator().manual_seed(0), num_samples=4000)
    choices = torch.stack([s.choices[0, 0] for s in samples])
    freq = torch.bincount(choices, minlength=p.shape[-1]).double() / len(samples)
    q = p[0, 0] / p[0, 0].sum()
    assert (freq - q).abs().max() < 0.03 and (freq[~allowed[0, 0]] == 0).all()
