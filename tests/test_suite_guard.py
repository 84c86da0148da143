"""The suite's own guard (tests/conftest.py): it refuses to pass with a fast path missing, and in CI
(NATFAST_STRICT_SKIPS=1) a skip for any reason but a missing GPU fails the run."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATFAST_TEST_WITHOUT", "NATFAST_STRICT_SKIPS"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_missing_extension_fails_the_run_naming_it():
    run = _pytest({"NATFAST_DISABLE_EXTENSION": "1"}, "tests/test_dispatch_table.py")
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "cpu_kernels: disabled by NATFAST_DISABLE_EXTENSION" in out and "NATFAST_TEST_WITHOUT=" in out, out[-2000:]


def test_strict_skips_fail_the_run_and_skips_are_counted_by_reason():
    env = {"NATFAST_DISABLE_EXTENSION": "1", "NATFAST_TEST_WITHOUT": "cpu_kernels,executor"}
    lenient = _pytest(env, "tests/test_dispatch_table.py")
    assert lenient.returncode == 0, lenient.stdout[-2000:]
    assert "skipped tests by reason" in lenient.stdout and "2  the C++ CPU kernels are not built" in lenient.stdout
    strict = _pytest({**env, "NATFAST_STRICT_SKIPS": "1"}, "tests/test_dispatch_table.py")
    assert strict.returncode == 1 and "skip reason(s) CI must not have" in strict.stdout, strict.stdout[-2000:]
