"""Genotypes: the DARTS/NAT `Genotype(...)` form, the two cell families, validation.

An edge is `(op, from, to)`: nodes 0 and 1 are the cell's two inputs, nodes 2..B+1 the
intermediate nodes; every intermediate node has exactly two incoming edges.

Text forms: the Python repr the DARTS and NAT code print (read with `ast`, never evaluated) and
JSON. `load_arch` accepts a named architecture, a file holding either form, or the text itself.
"""
from __future__ import annotations

import ast
import difflib
import json
from collections import Counter, namedtuple
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

DARTS_PRIMITIVES = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
    "dil_conv_3x3", "dil_conv_5x5", "conv_3x3", "null",
)
ENAS_PRIMITIVES = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
    "conv_1x1", "conv_3x3", "conv_5x5", "null",
)
NATPP_PRIMITIVES = (
    "max_pool_3x3", "max_pool_5x5", "avg_pool_3x3", "avg_pool_5x5", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "conv_3x3",
    "conv_5x5", "null",
)
# The other ops of the NAT authors' operations.py, used by their published NAONet and its
# transformations: standalone (evaluation) networks build them, no supernet has them.
EVALUATION_PRIMITIVES = (
    "max_pool_2x2", "avg_pool_2x2", "sep_conv_1x1", "sep_conv_7x7", "dil_conv_1x1",
    "conv_1x3_3x1", "conv_1x7_7x1", "conv_7x1_1x7",
)
# Every op natfast implements; "unknown op" means outside this set, "not in the family" inside it.
ALL_PRIMITIVES = NATPP_PRIMITIVES[:-1] + EVALUATION_PRIMITIVES + ("null",)
KNOWN_OPS = frozenset(DARTS_PRIMITIVES + ENAS_PRIMITIVES + ALL_PRIMITIVES)

CELLS = ("normal", "reduce")
Edge = Tuple[str, int, int]


class GenotypeError(ValueError):
    """A genotype, or the text or file holding one, is malformed or does not fit its family."""


@dataclass(frozen=True)
class Family:
    """A cell family: its candidate operations and how a cell's output is formed."""
    name: str
    primitives: Tuple[str, ...]
    loose_end: bool      # True: output = concat of unused intermediate nodes (ENAS)
    num_nodes: int       # B, intermediate nodes per cell
    searchable: bool = True   # False: ops without supernet kernels; standalone networks only

    def with_primitives(self, primitives: Sequence[str], name: Optional[str] = None) -> "Family":
        """The same topology over another op set; NAT++ uses it with NATPP_PRIMITIVES, so the
        default name is `<name>++` (e.g. "darts++")."""
        prims = tuple(primitives)
        repeated = sorted(op for op, n in Counter(prims).items() if n > 1)
        if not prims or repeated:
            raise GenotypeError(f"a family needs a non-empty list of distinct ops; got {list(prims)}"
                                + (f" (repeated: {', '.join(repeated)})" if repeated else ""))
        return replace(self, name=name or f"{self.name}++", primitives=prims)


FAMILIES = {
    "darts": Family("darts", DARTS_PRIMITIVES, loose_end=False, num_nodes=4),
    "enas": Family("enas", ENAS_PRIMITIVES, loose_end=True, num_nodes=5),
}
EVALUATION_SUFFIX = "-eval"


def evaluation_family(family: Family) -> Family:
    """`family`'s topology over every op natfast builds (the authors' NAONet needs 2x2 pools and
    1x3/3x1 convolutions): named `<name>-eval`, for standalone networks only (not searchable)."""
    return replace(family.with_primitives(ALL_PRIMITIVES, family.name + EVALUATION_SUFFIX), searchable=False)


def get_family(name: str, natpp: bool = False) -> Family:
    """The family called `name` ("darts", "enas"; a "++" suffix means natpp=True), with the
    13-op NAT++ primitive set when `natpp`; "darts-eval" / "enas-eval" hold every op (standalone
    networks only)."""
    key = str(name).strip().lower()
    evaluation = key.endswith(EVALUATION_SUFFIX)
    if evaluation:
        key = key[:-len(EVALUATION_SUFFIX)]
    elif key.endswith("++"):
        key, natpp = key[:-2], True
    if key not in FAMILIES:
        raise GenotypeError(f"unknown family {name!r}; known families: {', '.join(FAMILIES)} "
                            f"(append '++' for the NAT++ op set, e.g. 'darts++', or '-eval' for every op, "
                            f"standalone networks only)")
    family = FAMILIES[key]
    if evaluation:
        return evaluation_family(family)
    return family.with_primitives(NATPP_PRIMITIVES) if natpp else family


# ----------------------------------------------------------------------------- normalising
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_sequence(x: Any) -> bool:
    return isinstance(x, Iterable) and not isinstance(x, (str, bytes, Mapping))


def _normalize_edges(edges: Any, cell: str) -> Tuple[Edge, ...]:
    """Edges as (op, from, to) tuples sorted (stably) by `to`; the DARTS pair form (op, from),
    two per node in node order, gets to = 2 + i // 2."""
    if not _is_sequence(edges):
        raise GenotypeError(f"{cell} cell: expected a list of (op, from, to) edges, got {edges!r}")
    edges = list(edges)
    form = None
    triples = []
    for i, edge in enumerate(edges):
        if not isinstance(edge, (tuple, list)) or len(edge) not in (2, 3):
            raise GenotypeError(f"{cell} cell, edge {i}: expected (op, from, to) or the DARTS pair "
                                f"(op, from), got {edge!r}")
        if form is not None and len(edge) != form:
            raise GenotypeError(f"{cell} cell, edge {i}: {edge!r} mixes (op, from) pairs with "
                                f"(op, from, to) triples; use one form per cell")
        form = len(edge)
        op, f = edge[0], edge[1]
        t = edge[2] if form == 3 else 2 + i // 2
        if not isinstance(op, str):
            raise GenotypeError(f"{cell} cell, edge {i}: the op must be a name (string), got {op!r}")
        if not (_is_int(f) and _is_int(t)):
            raise GenotypeError(f"{cell} cell, edge {i}: from and to must be integers, got {edge!r}")
        triples.append((op, f, t))
    return tuple(sorted(triples, key=lambda e: e[2]))


def _normalize_concat(concat: Any, cell: str, edges: Sequence[Edge]) -> Tuple[int, ...]:
    """Concat as a tuple of ints; None means all intermediate nodes (the DARTS default)."""
    if concat is None:
        return tuple(range(2, num_nodes(edges) + 2))
    if not _is_sequence(concat):
        raise GenotypeError(f"{cell}_concat: expected a list of node ids, got {concat!r}")
    nodes = tuple(concat)
    bad = [n for n in nodes if not _is_int(n)]
    if bad:
        raise GenotypeError(f"{cell}_concat: node ids must be integers, got {bad[0]!r} in {list(nodes)}")
    return nodes


def normalize(genotype: Any) -> Genotype:
    """The canonical form: edges as sorted (op, from, to) tuples, concat as a tuple of ints."""
    if not all(hasattr(genotype, field) for field in Genotype._fields):
        raise GenotypeError(f"expected a Genotype({', '.join(Genotype._fields)}), got {genotype!r}")
    fields = {}
    for cell in CELLS:
        edges = _normalize_edges(getattr(genotype, cell), cell)
        fields[cell] = edges
        fields[f"{cell}_concat"] = _normalize_concat(getattr(genotype, f"{cell}_concat"), cell, edges)
    return Genotype(**fields)


def num_nodes(edges: Sequence[Edge]) -> int:
    """B, the number of intermediate nodes the edges reach (nodes 2..B+1)."""
    return max((t for _, _, t in edges), default=1) - 1


def output_nodes(edges: Sequence[Edge], concat: Optional[Sequence[int]], family: Family) -> Tuple[int, ...]:
    """The nodes concatenated into the cell's output.

    Fully-concat: `concat`, or every intermediate node when it is empty/None. Loose-end: the
    intermediate nodes no edge starts from; connections decide, so a null edge still counts as a use.
    """
    intermediate = range(2, family.num_nodes + 2)
    if family.loose_end:
        used = {f for _, f, _ in edges}
        return tuple(n for n in intermediate if n not in used)
    return tuple(concat) if concat else tuple(intermediate)


# ----------------------------------------------------------------------------- validating
def _check_op(where: str, edge: Edge, family: Family) -> None:
    op = edge[0]
    if op in family.primitives:
        return
    ops = ", ".join(family.primitives)
    if op in KNOWN_OPS:
        raise GenotypeError(f"{where}: edge {edge} uses {op!r}, which is not an op of the "
                            f"{family.name} family ({ops})")
    close = difflib.get_close_matches(op, family.primitives, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise GenotypeError(f"{where}: edge {edge} has unknown op {op!r}{hint}; {family.name} ops: {ops}")


def _check_edges(cell: str, edges: Sequence[Edge], family: Family) -> None:
    where, b = f"{cell} cell", family.num_nodes
    if not edges:
        raise GenotypeError(f"{where} has no edges; a {family.name} cell has {b} nodes with 2 inputs each")
    for edge in edges:
        _check_op(where, edge, family)
    # Targets 2..k+1 without gaps but k != B: the cell was written for another node count.
    targets = sorted({t for _, _, t in edges})
    if targets == list(range(2, targets[-1] + 1)) and len(targets) != b:
        raise GenotypeError(f"{where} has {len(targets)} intermediate nodes (2..{targets[-1]}) but a "
                            f"{family.name} cell has {b} (nodes 2..{b + 1})")
    for edge in edges:
        _, f, t = edge
        if not 2 <= t <= b + 1:
            raise GenotypeError(f"{where}: edge {edge} goes to node {t}, outside the intermediate "
                                f"nodes 2..{b + 1} of a {family.name} cell")
        if f < 0:
            raise GenotypeError(f"{where}: edge {edge} comes from node {f}; node ids start at 0")
        if f >= t:
            raise GenotypeError(f"{where}: edge {edge} comes from node {f}, which is not earlier than "
                                f"its target node {t}; an edge must go from a lower to a higher node")
    inputs = Counter(t for _, _, t in edges)
    for t in range(2, b + 2):
        if inputs[t] != 2:
            raise GenotypeError(f"{where}: node {t} has {inputs[t]} incoming edge"
                                f"{'' if inputs[t] == 1 else 's'}; every intermediate node needs exactly 2")


def _check_concat(cell: str, concat: Sequence[int], family: Family) -> Tuple[int, ...]:
    last = family.num_nodes + 1
    if not concat:
        raise GenotypeError(f"{cell}_concat is empty; list the output nodes (among 2..{last}) "
                            f"or leave it out to concatenate all of them")
    for n in concat:
        if n in (0, 1):
            raise GenotypeError(f"{cell}_concat {list(concat)} contains input node {n}; only "
                                f"intermediate nodes 2..{last} can be concatenated")
        if not 2 <= n <= last:
            raise GenotypeError(f"{cell}_concat {list(concat)} contains node {n}, outside the "
                                f"intermediate nodes 2..{last} of a {family.name} cell")
    repeated = [n for n, k in Counter(concat).items() if k > 1]
    if repeated:
        raise GenotypeError(f"{cell}_concat {list(concat)} lists node {repeated[0]} more than once")
    return tuple(concat)


def validate(genotype: Any, family: Family) -> Genotype:
    """Check `genotype` against `family`; returns its normalised form. For a loose-end family the
    concat is derived from the connections (any given one only has to be a list of ints)."""
    g = normalize(genotype)
    fields = {}
    for cell in CELLS:
        edges, concat = getattr(g, cell), getattr(g, f"{cell}_concat")
        _check_edges(cell, edges, family)
        fields[cell] = edges
        fields[f"{cell}_concat"] = (output_nodes(edges, concat, family) if family.loose_end
                                    else _check_concat(cell, concat, family))
    return Genotype(**fields)


def infer_family(genotype: Any) -> Family:
    """The family whose node count and ops fit: darts or enas, else their NAT++ variants, else their
    -eval variants (every op). Op sets overlap (pools, skip, sep convs, conv_3x3, null), so the node
    count decides: 4 darts, 5 enas."""
    g = normalize(genotype)
    b = num_nodes(g.normal)
    if num_nodes(g.reduce) != b:
        raise GenotypeError(f"the normal cell has {b} intermediate nodes but the reduce cell has "
                            f"{num_nodes(g.reduce)}; both cells need the same number")
    ops = {op for op, _, _ in g.normal + g.reduce}
    candidates = (list(FAMILIES.values()) + [f.with_primitives(NATPP_PRIMITIVES) for f in FAMILIES.values()]
                  + [evaluation_family(f) for f in FAMILIES.values()])
    for family in candidates:
        if family.num_nodes == b and ops <= set(family.primitives):
            return family
    known = "; ".join(f"{f.name}: {f.num_nodes} nodes" for f in FAMILIES.values())
    raise GenotypeError(f"cannot infer the family of a genotype with {b} intermediate nodes and ops "
                        f"{sorted(ops)} ({known}; ops as in get_family(name).primitives)")


# ----------------------------------------------------------------------------- text forms
def format_genotype(genotype: Any) -> str:
    """The one-line DARTS/NAT repr, readable by `parse` (and by the authors' code)."""
    g = normalize(genotype)
    return (f"Genotype(normal={list(g.normal)!r}, normal_concat={list(g.normal_concat)!r}, "
            f"reduce={list(g.reduce)!r}, reduce_concat={list(g.reduce_concat)!r})")


def _call_name(node: ast.AST) -> Optional[str]:
    """`Genotype` for both `Genotype(...)` and `genotypes.Genotype(...)`."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


_MAX_RANGE = 1000   # node ids are small; refuses range(10**12) before it is built


def _literal(node: ast.AST, field: str) -> Any:
    """A literal value, or `range(...)` of int literals as DARTS writes concat; nothing is executed."""
    if _call_name(node) == "range":
        args = [_literal(a, field) for a in node.args]
        if node.keywords or not 1 <= len(args) <= 3 or not all(_is_int(a) for a in args):
            raise GenotypeError(f"{field}: range(...) takes 1 to 3 integers, got {ast.unparse(node)}")
        values = range(*args)
        if len(values) > _MAX_RANGE:
            raise GenotypeError(f"{field}: {ast.unparse(node)} is far too long for a list of node ids")
        return list(values)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise GenotypeError(f"{field}: only literal lists, tuples, strings and numbers (and range(a, b)) "
                            f"are allowed, got {ast.unparse(node)}") from None


def _parse_repr(text: str) -> Dict[str, Any]:
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as exc:
        raise GenotypeError(f"not a valid Genotype(...) expression: {exc.msg} "
                            f"(line {exc.lineno}, column {exc.offset})") from None
    stmt = tree.body[0] if len(tree.body) == 1 else None
    call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
    if _call_name(call) != "Genotype":
        raise GenotypeError("expected one Genotype(normal=[...], normal_concat=[...], reduce=[...], "
                            "reduce_concat=[...]) expression (optionally as NAME = Genotype(...)) "
                            "or a JSON object")
    if len(call.args) > len(Genotype._fields) or any(isinstance(a, ast.Starred) for a in call.args):
        raise GenotypeError(f"Genotype(...) takes at most {len(Genotype._fields)} plain positional "
                            f"arguments ({', '.join(Genotype._fields)})")
    nodes = dict(zip(Genotype._fields, call.args))
    for kw in call.keywords:
        if kw.arg not in Genotype._fields:
            raise GenotypeError(f"Genotype(...) has no field {kw.arg or '**'!r}; "
                                f"fields: {', '.join(Genotype._fields)}")
        if kw.arg in nodes:
            raise GenotypeError(f"Genotype(...) field {kw.arg!r} is given twice")
        nodes[kw.arg] = kw.value
    return {field: _literal(node, field) for field, node in nodes.items()}


def _from_mapping(data: Mapping[str, Any]) -> Tuple[Genotype, Optional[str]]:
    """A genotype (concat fields optional) and the "family" entry, if any."""
    unknown = sorted(set(data) - set(Genotype._fields) - {"family", "name"})
    if unknown:
        raise GenotypeError(f"unknown key(s) {', '.join(map(repr, unknown))}; expected "
                            f"{', '.join(Genotype._fields)} (and optionally family, name)")
    missing = [cell for cell in CELLS if cell not in data]
    if missing:
        raise GenotypeError(f"missing the {' and '.join(missing)} cell; a genotype needs "
                            f"'normal' and 'reduce' edge lists")
    family = data.get("family")
    if family is not None and not isinstance(family, str):
        raise GenotypeError(f"family must be a name such as 'darts', got {family!r}")
    return normalize(Genotype(**{f: data.get(f) for f in Genotype._fields})), family


def _load_json(text: str) -> Dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise GenotypeError(f"expected a JSON object with normal/reduce edge lists, got {type(data).__name__}")
    return data


def parse(text: str) -> Genotype:
    """Read a genotype from the repr form (`Genotype(...)`, `NAME = Genotype(...)`) or from JSON.
    Returns it normalised (not validated: see `validate`)."""
    if not isinstance(text, str) or not text.strip():
        raise GenotypeError("empty text: expected Genotype(...) or a JSON object")
    text = text.strip()
    if text.startswith("{"):
        return from_json(text)
    return _from_mapping(_parse_repr(text))[0]


def to_json(genotype: Any, family: Optional[Family | str] = None) -> str:
    """JSON with the four Genotype fields, plus "family" when given (load_arch reads it)."""
    data: Dict[str, Any] = dict(normalize(genotype)._asdict())
    if family is not None:
        data["family"] = family if isinstance(family, str) else family.name
    return json.dumps(data)


def from_json(text: str) -> Genotype:
    """The genotype in a JSON object ({"normal": [[op, from, to], ...], ...}); normalised."""
    return _from_mapping(_load_json(text))[0]




# ----------------------------------------------------------------------------- named architectures
def __getattr__(name: str):
    """NAMED lives in natfast.zoo (imported on first use: the zoo builds on this module)."""
    if name == "NAMED":
        from .zoo import NAMED
        return NAMED
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _named_keys() -> Dict[str, str]:
    from .zoo import NAMED
    return {name.lower(): name for name in NAMED}


def get_named(name: str) -> Tuple[Genotype, Family]:
    """A named architecture (case-insensitive; natfast.zoo lists them) and its family."""
    from .zoo import NAMED
    key = _named_keys().get(str(name).strip().lower())
    if key is None:
        raise GenotypeError(f"unknown architecture {name!r}; named architectures: {', '.join(NAMED)}")
    genotype, family = NAMED[key]
    return genotype, get_family(family)


def load_arch(spec: str) -> Tuple[Genotype, Family]:
    """A validated architecture and its family from a name in NAMED, a file holding Genotype(...)
    or JSON (a JSON "family" key picks the family, else it is inferred), or that text itself."""
    if str(spec).strip().lower() in _named_keys():
        return get_named(spec)
    text = str(spec).strip()
    source = "inline genotype"
    if not text.startswith(("{", "Genotype(")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise GenotypeError(f"{spec!r} is neither a named architecture ({', '.join(_named_keys().values())}) "
                                f"nor an existing file")
        source = str(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise GenotypeError(f"{source}: cannot read: {exc}") from None
    try:
        family_name = None
        if text.lstrip().startswith("{"):
            genotype, family_name = _from_mapping(_load_json(text))
        else:
            genotype = parse(text)
        family = get_family(family_name) if family_name else infer_family(genotype)
        return validate(genotype, family), family
    except GenotypeError as exc:
        raise GenotypeError(f"{source}: {exc}") from None
