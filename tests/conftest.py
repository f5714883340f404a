import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNLI = ROOT.parent / "shared" / "snli"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
TEST_UMASK = 0o022  # the usual umask, for the test process and every stage it starts
os.umask(TEST_UMASK)


def run_cli(*args, check=True, timeout=1200, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run `python -m <args>` as a user would, from the repository root."""
    proc = subprocess.run(
        [sys.executable, "-m", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def slurm_available() -> str | None:
    """None when the local cluster answers, else why not."""
    if shutil.which("sinfo") is None:
        return "no Slurm client on PATH (make test starts the local cluster)"
    if not os.environ.get("SLURM_CONF"):
        return 'SLURM_CONF is not set (run: eval "$(slurm/local-cluster.sh env)")'
    proc = subprocess.run(["sinfo", "--noheader", "--format=%P %t"], capture_output=True, text=True)
    if proc.returncode != 0 or ("idle" not in proc.stdout and "mix" not in proc.stdout and "alloc" not in proc.stdout):
        return f"the Slurm cluster does not answer: {proc.stderr.strip() or proc.stdout.strip()}"
    return None


# Fixtures that bring their marker with them: a test that uses one needs what the marker says.
FIXTURE_MARKS = {"slurm_cluster": "slurm", "smoke_run": "model"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, mark in FIXTURE_MARKS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
        if item.get_closest_marker("slurm") or item.get_closest_marker("real_model"):
            item.add_marker("model")  # a Slurm test runs stages; make check leaves out everything marked model


@pytest.fixture(scope="session")
def slurm_cluster():
    why = slurm_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm tests may not skip in CI: {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One complete smoke run through the local executor, planned inside its output_root; tests copy it
    before they change anything."""
    from hpcnli.run.paths import RunPaths

    root = tmp_path_factory.mktemp("runs")
    proc = run_cli(
        "hpcnli.submit", "--config", "jobs/smoke.yaml", "--executor", "local", "--name", "smoke", f"output_root={root}"
    )
    assert "report:" in proc.stdout
    return RunPaths(root / "smoke")


def copy_run(src, dst):
    """A copy of a run directory (outside the original's output_root) to break things in."""
    from hpcnli.run.paths import RunPaths

    shutil.copytree(src.run_dir, dst)
    return RunPaths(dst)
