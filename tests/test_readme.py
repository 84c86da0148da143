"""The README's Backends tables say what the code does: each op's reference and fast versions where
they are registered, and every environment variable the code reads."""
import re
from pathlib import Path

import natfast.ops  # noqa: F401  (registers every op's reference)
from natfast.ops import dispatch
from natfast.ops.backends import triton as triton_backend

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BACKENDS = README[README.index("## Backends"):README.index("### Environment switches")]
ENVIRONMENT = README[README.index("### Environment switches"):README.index("## Layout")]
# Where each column's files are.
FOLDERS = {"reference": ROOT / "natfast" / "ops", "cpu": ROOT / "csrc" / "cpu", "triton": ROOT / "kernels",
           "cuda": ROOT / "csrc" / "cuda"}


def _op_table():
    """{op: {column: file named there, or None for "-"}} from the README's op table."""
    table = {}
    for line in BACKENDS.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        files = [None if c == "-" else (re.findall(r"`([\w.]+\.(?:py|cpp|cu))`", c) or ["(in torch)"])[0]
                 for c in cells[1:]]
        for op in re.findall(r"`(\w+)`", cells[0].split(" (")[0]):
            table[op] = dict(zip(FOLDERS, files))
    return table


def _source(path: Path) -> str:
    return path.read_text()


def _registered_in_source(backend: str) -> set:
    """Ops a fast backend registers, read from its module (the CPU and CUDA ones register only where
    their kernels are built, so the live registry would depend on this machine)."""
    if backend == "triton":
        return set(triton_backend.OPS)
    text = _source(ROOT / "natfast" / "ops" / "backends" / f"{backend}.py")
    ops = set(re.findall(rf'dispatch\.register\("(\w+)", "{backend}"', text))
    if backend == "cpu":   # the loops over (op, kernel, limits) tuples
        ops |= set(re.findall(r'\("(\w+)", \w+_cpu, _limits_', text))
    return ops


def test_the_op_table_lists_every_dispatched_op_once():
    table = _op_table()
    assert set(table) == set(dispatch.operations())


def test_each_reference_lives_in_the_file_the_table_names():
    for op, files in _op_table().items():
        text = _source(FOLDERS["reference"] / files["reference"])
        assert f'dispatch.register("{op}", "reference"' in text, (op, files["reference"])


def test_each_fast_column_matches_the_backends_registrations_and_its_files_exist():
    table = _op_table()
    for backend in ("cpu", "triton", "cuda"):
        listed = {op for op, files in table.items() if files[backend] is not None}
        assert listed == _registered_in_source(backend), backend
        for op in listed:
            name = table[op][backend]
            assert name == "(in torch)" or (FOLDERS[backend] / name).is_file(), (op, backend, name)


def _environment_reads() -> set:
    """Every environment variable the package, its build, tests, scripts and CI read."""
    patterns = [r'environ(?:\.get|\.setdefault|\.pop)?\(\s*"([A-Z][A-Z0-9_]+)"', r'environ\["([A-Z][A-Z0-9_]+)"\]',
                r'_flag\("([A-Z][A-Z0-9_]+)"\)', r'getenv\("([A-Z][A-Z0-9_]+)"\)', r'\$\{([A-Z][A-Z0-9_]+)[:}+-]',
                r'^([A-Z][A-Z0-9_]+) \?=']
    files = [ROOT / "setup.py", ROOT / "Makefile", ROOT / "tests" / "conftest.py"]
    for folder, suffixes in (("natfast", (".py",)), ("csrc", (".cpp", ".h", ".cu")), ("bench", (".py", ".sh")),
                             (".ci", (".sh", ""))):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in suffixes]
    names = set()
    for path in files:
        text = path.read_text(errors="ignore")
        for pattern in patterns:
            names |= set(re.findall(pattern, text, flags=re.M))
    return names - {"TMPDIR", "PYTHONPATH", "PWD", "HOME"}   # the system's, not switches


def test_every_environment_variable_the_code_reads_is_in_the_readme_table():
    names = _environment_reads()
    assert {"NATFAST_BACKEND", "NATFAST_CPU_BLAS", "NATFAST_TEST_WITHOUT", "MAX_JOBS"} <= names  # the scan works
    missing = sorted(n for n in names if not re.search(rf"`{n}[`=]", ENVIRONMENT))
    assert not missing, f"read by the code, not in the README's environment table: {missing}"
