import os
import sys
from pathlib import Path

import pytest

# Triton kernels run on the CPU through Triton's interpreter when there is no GPU (correctness only).
try:
    import torch
    _gpu = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _gpu = False
if not _gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NATFAST_TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10"

# NATFAST_RECORD_TRITON_LAUNCHES=path: record the interpreted Triton launches of this run, for
# tests/triton_compile_check.py to compile for real GPUs (see tests/test_triton_compile.py).
_dump_triton_launches = None


# The suite refuses to run without the fast paths this machine should have (tests/README: a kernel
# test that skips for a missing build would pass a broken install). NATFAST_TEST_WITHOUT=cpu_kernels,
# executor,triton runs it knowingly without them (their tests then skip, and say so at the end).
# NATFAST_STRICT_SKIPS=1 (CI) fails the run for any skip whose reason is not one CI cannot have.
ALLOWED_SKIPS_WHEN_STRICT = ("no CUDA GPU",)


def pytest_sessionstart(session):
    from natfast.info import missing_fast_paths

    allowed = {name.strip() for name in os.environ.get("NATFAST_TEST_WITHOUT", "").split(",") if name.strip()}
    missing = {name: why for name, why in missing_fast_paths().items() if name not in allowed}
    if missing:
        lines = "\n".join(f"  {name}: {why}" for name, why in missing.items())
        pytest.exit(f"natfast's tests need the fast paths this machine should run, and these are missing:\n{lines}\n"
                    f"Build them (`pip install --no-build-isolation -e .`; Triton comes with torch on Linux), or "
                    f"set NATFAST_TEST_WITHOUT={','.join(missing)} to test without them (their tests then skip).",
                    returncode=3)


def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def _skip_counts(config) -> dict:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    counts = {}
    for report in (reporter.stats.get("skipped", []) if reporter is not None else []):
        reason = _skip_reason(report)
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _disallowed_skips(config) -> list:
    if os.environ.get("NATFAST_STRICT_SKIPS") != "1":
        return []
    return [r for r in _skip_counts(config) if not any(allowed in r for allowed in ALLOWED_SKIPS_WHEN_STRICT)]


def pytest_sessionfinish(session, exitstatus):
    if _disallowed_skips(session.config) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skip counts by reason (a skip is a test that proved nothing: the count must be visible)."""
    counts = _skip_counts(config)
    if counts:
        terminalreporter.section("skipped tests by reason")
        for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{count:5d}  {reason}")
    bad = _disallowed_skips(config)
    if bad:
        terminalreporter.write_line(f"NATFAST_STRICT_SKIPS=1: the run fails: {len(bad)} skip reason(s) CI must not "
                                    f"have (allowed: {', '.join(ALLOWED_SKIPS_WHEN_STRICT)}): {bad}", red=True)


def pytest_configure(config):
    global _dump_triton_launches
    if os.environ.get("NATFAST_RECORD_TRITON_LAUNCHES") and os.environ.get("TRITON_INTERPRET") == "1":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from triton_compile_check import install_recorder
        _dump_triton_launches = install_recorder()


def pytest_unconfigure(config):
    if _dump_triton_launches is not None:
        _dump_triton_launches(os.environ["NATFAST_RECORD_TRITON_LAUNCHES"])
