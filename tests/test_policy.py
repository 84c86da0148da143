"""The transformation policies: masking, adjacency variants, REINFORCE on a toy reward."""
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
