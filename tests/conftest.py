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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the 2-core machines: one torch thread per process (each worker and every stage
    # it starts), so that two workers' processes do not oversubscribe the cores. Set before torch loads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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
    return checked(proc, check)


def checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """The command's result; with check, a non-zero exit fails the test with the ends of its output."""
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{proc.args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def run_main(module: str, *args, check=True, cwd=ROOT) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` answered in this process: the command's own main() with its output and exit
    status, as run_cli returns them, without a new interpreter that imports torch again (5 to 15 s a command).
    For what a command answers (refusals, plans, reports, status); a test of processes, signals or stages that
    run on their own uses run_cli. A traceback (a bug) is returned on stderr with status 1, as Python would."""
    import contextlib
    import importlib
    import io
    import traceback

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                status = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        os.chdir(here)
    proc = subprocess.CompletedProcess([module, *map(str, args)], status, out.getvalue(), err.getvalue())
    return checked(proc, check)


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


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The directory `name`, filled by make(directory) once per test session. Under pytest-xdist every worker that
    asks gets the same one: the first makes it in the session's common temporary directory while the others
    wait on its lock, so a run that several tests read is made once, whichever workers they run on."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' base directories lie side by side in the session's
    target, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # what a worker that failed to make it left
            target.mkdir()
            make(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One complete smoke run through the local executor, planned inside its output_root; tests copy it
    before they change anything."""
    from hpcnli.run.paths import RunPaths

    def make(root):
        proc = run_cli(
            "hpcnli.submit",
            "--config",
            "jobs/smoke.yaml",
            "--executor",
            "local",
            "--name",
            "smoke",
            f"output_root={root}",
        )
        assert "report:" in proc.stdout

    return RunPaths(made_once(tmp_path_factory, "smoke-runs", make) / "smoke")


def copy_run(src, dst):
    """A copy of a run directory (outside the original's output_root) to break things in."""
    from hpcnli.run.paths import RunPaths

    shutil.copytree(src.run_dir, dst)
    return RunPaths(dst)
