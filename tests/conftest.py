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


def run_cli(*args, check=True, timeout=1200, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run `python -m <args>` as a user would, from the repository root."""
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


def slurm_available() -> str | None:
    """None when the local cluster answers, else why not."""
    if shutil.which("sinfo") is None:
        return "no Slurm client on PATH (make test starts the local cluster)"
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (run: eval \"$(slurm/local-cluster.sh env)\")"
    proc = subprocess.run(["sinfo", "--noheader", "--format=%P %t"], capture_output=True, text=True)
    if proc.returncode != 0 or "idle" not in proc.stdout and "mix" not in proc.stdout and "alloc" not in proc.stdout:
        return f"the Slurm cluster does not answer: {proc.stderr.strip() or proc.stdout.strip()}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    why = slurm_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm tests may not skip in CI: {why}")
        pytest.skip(why)
