"""The README's Backends tables say what the code does: each op's reference and fast versions where
they are registered, and every environment variable the code reads."""
import re
from pathlib import Path

import pytest

from natfast.info import expected_fast_paths, missing_fast_paths
from natfast.ops import dispatch

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


def _registered(backend: str) -> set:
    """Ops the backend registers: from the live registry where it is active here (the suite runs with
    every fast path this machine should have), else, for CUDA without a GPU, from its module."""
    path = {"cpu": "cpu_kernels", "triton": "triton", "cuda": "cuda_kernels"}[backend]
    active = path in expected_fast_paths() and path not in missing_fast_paths()
    if active:
        return {op for op in dispatch.operations() if backend in dispatch.registered(op)}
    if backend != "cuda":
        pytest.skip(f"the {backend} backend is not active here, so its registrations cannot be read")
    text = (ROOT / "natfast" / "ops" / "backends" / "cuda.py").read_text()
    return set(re.findall(r'dispatch\.register\("(\w+)", "cuda"', text))


def test_the_op_table_lists_every_dispatched_op_once():
    table = _op_table()
    assert set(table) == set(dispatch.operations())


def test_each_reference_lives_in_the_file_the_table_names():
    for op, files in _op_table().items():
        text = (FOLDERS["reference"] / files["reference"]).read_text()
        assert f'dispatch.register("{op}", "reference"' in text, (op, files["reference"])


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_each_fast_column_matches_the_backends_registrations_and_its_files_exist(backend):
    table = _op_table()
    listed = {op for op, files in table.items() if files[backend] is not None}
    assert listed == _registered(backend)
    for op in listed:
        name = table[op][backend]
        assert name == "(in torch)" or (FOLDERS[backend] / name).is_file(), (op, name)


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
