import json

import pytest

from natfast.genotype import (
    DARTS_PRIMITIVES, ENAS_PRIMITIVES, FAMILIES, NAMED, NATPP_PRIMITIVES, Genotype, GenotypeError,
    format_genotype, from_json, get_family, get_named, infer_family, load_arch, normalize, num_nodes,
    output_nodes, parse, to_json, validate,
)

DARTS_FAM, ENAS_FAM = FAMILIES["darts"], FAMILIES["enas"]
DARTS = NAMED["DARTS"][0]
ENAS = NAMED["ENAS"][0]


def with_cell(g, cell, edges=None, concat=None):
    """g with one cell's edges and/or concat replaced."""
    fields = g._asdict()
    if edges is not None:
        fields[cell] = edges
    if concat is not None:
        fields[f"{cell}_concat"] = concat
    return Genotype(**fields)


def to_pairs(edges):
    return [(op, f) for op, f, _ in edges]


# ----------------------------------------------------------------------------- named architectures
@pytest.mark.parametrize("name", NAMED)
def test_named_validate_with_their_family(name):
    genotype, family = get_named(name)
    assert family.name == NAMED[name][1]
    assert validate(genotype, family) == genotype


@pytest.mark.parametrize("name", NAMED)
def test_round_trips(name):
    g, family = get_named(name)
    assert parse(format_genotype(g)) == g
    assert from_json(to_json(g)) == g
    assert parse(to_json(g)) == g
    pairs = Genotype(to_pairs(g.normal), list(g.normal_concat), to_pairs(g.reduce), list(g.reduce_concat))
    assert normalize(pairs) == g
    assert parse(format_genotype(pairs)) == g
    assert infer_family(g) == family


def test_darts_is_the_spec_genotype():
    s = "sep_conv_3x3"
    assert DARTS.normal == ((s, 0, 2), (s, 1, 2), (s, 0, 3), (s, 1, 3), (s, 1, 4), ("skip_connect", 0, 4),
                            ("skip_connect", 0, 5), ("dil_conv_3x3", 2, 5))
    assert DARTS.reduce[2] == ("skip_connect", 2, 3) and DARTS.normal_concat == (2, 3, 4, 5)


def test_nat_darts_is_darts_with_the_published_replacements():
    nat = NAMED["NAT_DARTS"][0]
    changed = {(cell, e[1], e[2]): (e[0], n[0])
               for cell in ("normal", "reduce")
               for e, n in zip(getattr(DARTS, cell), getattr(nat, cell)) if e != n}
    assert changed == {
        ("normal", 0, 3): ("sep_conv_3x3", "skip_connect"),
        ("normal", 1, 4): ("sep_conv_3x3", "skip_connect"),
        ("reduce", 1, 2): ("max_pool_3x3", "skip_connect"),
        ("reduce", 1, 3): ("max_pool_3x3", "skip_connect"),
        ("reduce", 2, 4): ("skip_connect", "null"),
    }


def test_naonet_b_matches_the_nao_arch_string():
    # NAO_V1 train_NAONet_B_36_cifar10.sh: per node (x, x_op, y, y_op); normal then reduce.
    arc = [int(x) for x in "0 1 0 2 0 1 2 2 1 3 0 2 4 0 1 3 2 1 0 3 1 1 1 0 2 1 2 4 1 0 2 3 3 1 2 2 0 2 0 2".split()]
    ops = ["sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "skip_connect"]
    cells = []
    for half in (arc[:20], arc[20:]):
        cells.append(tuple(e for i in range(5) for e in ((ops[half[4 * i + 1]], half[4 * i], i + 2),
                                                       (ops[half[4 * i + 3]], half[4 * i + 2], i + 2))))
    naonet = NAMED["NAONet_B"][0]
    assert (naonet.normal, naonet.reduce) == tuple(cells)


def test_get_named_is_case_insensitive_and_lists_names():
    assert get_named("nat_darts")[0] == NAMED["NAT_DARTS"][0]
    with pytest.raises(GenotypeError, match="unknown architecture 'AmoebaNet'.*DARTS.*NAONet"):
        get_named("AmoebaNet")


# ----------------------------------------------------------------------------- families
def test_get_family():
    assert get_family("DARTS") is DARTS_FAM
    pp = get_family("darts", natpp=True)
    assert pp.name == "darts++" and pp.primitives == NATPP_PRIMITIVES and not pp.loose_end and pp.num_nodes == 4
    assert get_family("enas++") == ENAS_FAM.with_primitives(NATPP_PRIMITIVES)
    with pytest.raises(GenotypeError, match="unknown family 'nasnet'.*darts, enas"):
        get_family("nasnet")


def test_with_primitives_rejects_repeats():
    assert DARTS_FAM.with_primitives(["null", "skip_connect"], name="tiny").name == "tiny"
    with pytest.raises(GenotypeError, match="repeated: null"):
        DARTS_FAM.with_primitives(["null", "null"])


def test_infer_family():
    assert infer_family(DARTS) is DARTS_FAM
    assert infer_family(ENAS) is ENAS_FAM
    # conv_3x3, skip and null are in both op sets: 4 nodes means darts.
    assert infer_family(NAMED["ResBlock"][0]) is DARTS_FAM
    wide = with_cell(DARTS, "normal", [("max_pool_5x5",) + e[1:] for e in DARTS.normal])
    assert infer_family(wide).name == "darts++"
    dil5 = with_cell(ENAS, "normal", [("dil_conv_3x3",) + e[1:] for e in ENAS.normal])
    assert infer_family(dil5).name == "enas++"
    three = Genotype(DARTS.normal[:6], None, DARTS.reduce[:6], None)
    with pytest.raises(GenotypeError, match="cannot infer.*3 intermediate nodes.*darts: 4 nodes; enas: 5 nodes"):
        infer_family(three)
    with pytest.raises(GenotypeError, match="normal cell has 4 .* reduce cell has 5"):
        infer_family(with_cell(DARTS, "reduce", ENAS.reduce))


# ----------------------------------------------------------------------------- normalising
def test_normalize_sorts_by_target_stably_and_makes_tuples():
    g = Genotype([["a", 1, 3], ["b", 0, 2], ["c", 2, 3], ["d", 1, 2]], range(2, 4), [], None)
    n = normalize(g)
    assert n.normal == (("b", 0, 2), ("d", 1, 2), ("a", 1, 3), ("c", 2, 3))
    assert n.normal_concat == (2, 3)
    assert n.reduce == () and n.reduce_concat == ()


def test_none_concat_means_all_intermediate_nodes():
    assert normalize(DARTS._replace(normal_concat=None)).normal_concat == (2, 3, 4, 5)


def test_num_nodes():
    assert num_nodes(DARTS.normal) == 4 and num_nodes(ENAS.normal) == 5 and num_nodes(()) == 0


def test_mixed_pair_and_triple_forms_are_rejected():
    with pytest.raises(GenotypeError, match="normal cell, edge 1.*mixes"):
        normalize(with_cell(DARTS, "normal", [("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1)]))


def test_non_integer_node_ids_are_rejected():
    with pytest.raises(GenotypeError, match="reduce cell, edge 0: from and to must be integers"):
        normalize(with_cell(DARTS, "reduce", [("max_pool_3x3", "0", 2)] + list(DARTS.reduce[1:])))
    with pytest.raises(GenotypeError, match="normal_concat: node ids must be integers"):
        normalize(with_cell(DARTS, "normal", concat=[2, "3"]))


# ----------------------------------------------------------------------------- validation errors
def replace_edge(g, cell, index, edge):
    edges = list(getattr(g, cell))
    edges[index] = edge
    return with_cell(g, cell, edges)


def test_unknown_op():
    g = replace_edge(DARTS, "normal", 0, ("sep_conv_9x9", 0, 2))
    with pytest.raises(GenotypeError) as exc:
        validate(g, DARTS_FAM)
    msg = str(exc.value)
    assert "normal cell" in msg and "unknown op 'sep_conv_9x9'" in msg and "('sep_conv_9x9', 0, 2)" in msg
    assert "did you mean" in msg and all(op in msg for op in DARTS_PRIMITIVES)


def test_op_outside_the_family():
    g = replace_edge(ENAS, "reduce", 0, ("dil_conv_3x3", 0, 2))
    with pytest.raises(GenotypeError, match=r"reduce cell: edge \('dil_conv_3x3', 0, 2\) uses 'dil_conv_3x3', "
                                            r"which is not an op of the enas family \(max_pool_3x3"):
        validate(g, ENAS_FAM)


@pytest.mark.parametrize("edge", [("sep_conv_3x3", 3, 3), ("sep_conv_3x3", 4, 3)])
def test_edge_from_a_later_node_or_itself(edge):
    g = replace_edge(DARTS, "normal", 2, edge)
    with pytest.raises(GenotypeError, match=rf"normal cell: edge .*comes from node {edge[1]}, which is not "
                                            r"earlier than its target node 3"):
        validate(g, DARTS_FAM)


def test_edge_from_a_negative_node():
    with pytest.raises(GenotypeError, match="comes from node -1; node ids start at 0"):
        validate(replace_edge(DARTS, "normal", 0, ("sep_conv_3x3", -1, 2)), DARTS_FAM)


def test_target_node_out_of_range():
    g = replace_edge(DARTS, "normal", 7, ("dil_conv_3x3", 2, 9))
    with pytest.raises(GenotypeError, match=r"edge \('dil_conv_3x3', 2, 9\) goes to node 9, outside the "
                                            r"intermediate nodes 2..5 of a darts cell"):
        validate(g, DARTS_FAM)
    g = replace_edge(DARTS, "normal", 0, ("sep_conv_3x3", 0, 1))
    with pytest.raises(GenotypeError, match="goes to node 1, outside"):
        validate(g, DARTS_FAM)


@pytest.mark.parametrize("edges, node, count", [
    (DARTS.normal[:-1], 5, "1 incoming edge;"),
    (DARTS.normal + (("skip_connect", 1, 4),), 4, "3 incoming edges;"),
])
def test_node_without_exactly_two_inputs(edges, node, count):
    with pytest.raises(GenotypeError, match=f"normal cell: node {node} has {count} every intermediate "
                                            f"node needs exactly 2"):
        validate(with_cell(DARTS, "normal", edges), DARTS_FAM)


def test_wrong_number_of_nodes_for_the_family():
    with pytest.raises(GenotypeError, match=r"normal cell has 5 intermediate nodes \(2..6\) but a darts\+\+ cell "
                                            r"has 4 \(nodes 2..5\)"):
        validate(ENAS, get_family("darts", natpp=True))
    with pytest.raises(GenotypeError, match=r"has 4 intermediate nodes .* enas\+\+ cell has 5"):
        validate(NAMED["ResBlock"][0], get_family("enas", natpp=True))


def test_repeated_connections_with_different_ops_are_valid():
    assert ENAS.normal[0][1:] == ENAS.normal[1][1:]
    validate(ENAS, ENAS_FAM)


@pytest.mark.parametrize("concat, words", [
    ([2, 3, 7], "contains node 7, outside the intermediate nodes 2..5"),
    ([2, 3, 3], "lists node 3 more than once"),
    ([0, 2, 3], "contains input node 0"),
    ([], "is empty"),
])
def test_bad_concat(concat, words):
    with pytest.raises(GenotypeError, match=f"reduce_concat .*{words}"):
        validate(with_cell(DARTS, "reduce", concat=concat), DARTS_FAM)


def test_loose_end_concat_is_derived_but_must_be_ints():
    g = validate(with_cell(ENAS, "reduce", concat=[2, 3, 4, 5, 6]), ENAS_FAM)
    assert g.reduce_concat == (2, 3, 6)
    with pytest.raises(GenotypeError, match="reduce_concat: node ids must be integers"):
        validate(with_cell(ENAS, "reduce", concat=["x"]), ENAS_FAM)


def test_empty_cell():
    with pytest.raises(GenotypeError, match="reduce cell has no edges"):
        validate(with_cell(DARTS, "reduce", []), DARTS_FAM)


# ----------------------------------------------------------------------------- output nodes
def test_output_nodes_fully_concat():
    assert output_nodes(DARTS.normal, DARTS.normal_concat, DARTS_FAM) == (2, 3, 4, 5)
    assert output_nodes(DARTS.normal, None, DARTS_FAM) == (2, 3, 4, 5)
    assert output_nodes(DARTS.normal, (), DARTS_FAM) == (2, 3, 4, 5)
    res = NAMED["ResBlock"][0]
    assert output_nodes(res.normal, res.normal_concat, DARTS_FAM) == (5,)


def test_output_nodes_loose_end():
    assert output_nodes(ENAS.normal, None, ENAS_FAM) == (2, 3, 4, 5, 6)
    assert output_nodes(ENAS.reduce, [2, 3, 4, 5, 6], ENAS_FAM) == (2, 3, 6)


def test_output_nodes_loose_end_counts_null_edges_as_uses():
    # Node 2's only consumer is a null edge: it still is not a loose end.
    edges = ENAS.normal[:4] + (("null", 2, 4), ("sep_conv_3x3", 1, 4)) + ENAS.normal[6:]
    assert output_nodes(edges, None, ENAS_FAM) == (3, 4, 5, 6)


# ----------------------------------------------------------------------------- parsing
NAT_REPO_TEXT = (
    "NAT_DARTS = Genotype(\n"
    "    normal=[('sep_conv_3x3', 0, 2), ('sep_conv_3x3', 1, 2), ('skip_connect', 0, 3), ('sep_conv_3x3', 1, 3), "
    "('skip_connect', 1, 4), ('skip_connect', 0, 4), ('skip_connect', 0, 5), ('dil_conv_3x3', 2, 5)], "
    "normal_concat=range(2, 6),\n"
    "    reduce=[('max_pool_3x3', 0, 2), ('skip_connect', 1, 2), ('skip_connect', 2, 3), ('skip_connect', 1, 3), "
    "('max_pool_3x3', 0, 4), ('null', 2, 4), ('skip_connect', 2, 5), ('max_pool_3x3', 1, 5)], "
    "reduce_concat=range(2, 6))\n"
)


def test_parse_the_authors_text_with_range():
    assert parse(NAT_REPO_TEXT) == NAMED["NAT_DARTS"][0]
    assert parse(NAT_REPO_TEXT.split("= ", 1)[1].replace("Genotype(", "genotypes.Genotype(")) == NAMED["NAT_DARTS"][0]


def test_parse_positional_fields_and_optional_concat():
    text = f"Genotype({list(DARTS.normal)}, [2, 3, 4, 5], {list(DARTS.reduce)})"
    assert parse(text) == DARTS


def test_parse_json_with_lists_and_pair_form():
    data = {"normal": [list(e) for e in to_pairs(DARTS.normal)], "reduce": [list(e) for e in DARTS.reduce],
            "family": "darts"}
    assert parse(json.dumps(data)) == DARTS


@pytest.mark.parametrize("text, words", [
    ("", "empty text"),
    ("Genotype(normal=[('sep_conv_3x3', 0, 2)", "not a valid Genotype"),
    ("[1, 2, 3]", "expected one Genotype"),
    ("Genotype(normal=[], reduce=[], colour=[])", "no field 'colour'"),
    ("Genotype(normal=[], reduce=[], normal=[])", "given twice"),
    ("Genotype(normal=[])", "missing the reduce cell"),
    ("Genotype(normal=__import__('os').system('true'), reduce=[])", "only literal"),
    ("Genotype(normal=[], reduce=[], reduce_concat=range(10**12))", "only literal"),
    ("Genotype(normal=[], reduce=[], reduce_concat=range(0, 100000))", "far too long"),
    ("Genotype(normal=[], reduce=[], reduce_concat=range('a'))", "range"),
    ('{"normal": [], "reduce": [],}', "invalid JSON"),
    ('{"normal": [], "reduce": [], "colour": 1}', "unknown key"),
    ('{"normal": [["sep_conv_3x3", 0]], "reduce": 3}', "reduce cell: expected a list"),
    ("{}", "missing the normal and reduce cell"),
])
def test_parse_errors(text, words):
    with pytest.raises(GenotypeError, match=words):
        parse(text)


def test_json_of_an_array_is_rejected():
    with pytest.raises(GenotypeError, match="expected a JSON object"):
        from_json("[1, 2]")


def test_to_json_records_the_family():
    assert json.loads(to_json(ENAS, ENAS_FAM))["family"] == "enas"


# ----------------------------------------------------------------------------- load_arch
def test_load_arch_named():
    g, family = load_arch("enas")
    assert g == ENAS and family is ENAS_FAM


def test_load_arch_files(tmp_path):
    repr_file = tmp_path / "nat_darts.py"
    repr_file.write_text(NAT_REPO_TEXT)
    assert load_arch(str(repr_file)) == (NAMED["NAT_DARTS"][0], DARTS_FAM)

    # ResBlock's ops fit both families' op sets; the JSON family key picks darts++.
    json_file = tmp_path / "res.json"
    json_file.write_text(to_json(NAMED["ResBlock"][0], "darts++"))
    g, family = load_arch(str(json_file))
    assert g == NAMED["ResBlock"][0] and family.name == "darts++"

    plain = tmp_path / "enas.json"
    plain.write_text(to_json(ENAS))
    assert load_arch(str(plain)) == (ENAS, ENAS_FAM)


def test_load_arch_inline_text():
    assert load_arch(format_genotype(DARTS)) == (DARTS, DARTS_FAM)


def test_load_arch_errors(tmp_path):
    with pytest.raises(GenotypeError, match="neither a named architecture .*DARTS.* nor an existing file"):
        load_arch(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(to_json(with_cell(DARTS, "normal", concat=[2, 9]), "darts"))
    with pytest.raises(GenotypeError, match=r"bad\.json: normal_concat .*contains node 9"):
        load_arch(str(bad))
    odd = tmp_path / "odd.json"
    odd.write_text(to_json(DARTS, "nasnet"))
    with pytest.raises(GenotypeError, match="odd.json: unknown family 'nasnet'"):
        load_arch(str(odd))


def test_family_op_sets_are_the_spec_ones():
    assert set(DARTS_PRIMITIVES) | set(ENAS_PRIMITIVES) <= set(NATPP_PRIMITIVES)
    assert len(NATPP_PRIMITIVES) == 13
