"""The Slurm adapter: the only place that runs Slurm's command-line tools (sinfo, squeue, sacct, scontrol).

Jobs are submitted by submitit (`hpcnli.launch.slurm`); everything else hpcnli asks the scheduler
goes through these functions, which answer with plain values and never raise for a missing Slurm.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime


def _run(*argv: str) -> subprocess.CompletedProcess | None:
    """The command's result, or None where Slurm's tools are not installed."""
    if shutil.which(argv[0]) is None:
        return None
    return subprocess.run(list(argv), capture_output=True, text=True)


def partition_problem(partition: str) -> str | None:
    """Why Slurm would refuse this partition (sinfo's view), or None; checked before anything is queued."""
    out = _run("sinfo", "--noheader", "--format=%R")
    if out is None:
        return (
            "resources.partition: no Slurm here (sinfo not found); use --executor local, "
            "or start one with slurm/local-cluster.sh up"
        )
    if out.returncode != 0:
        return f"resources.partition: Slurm does not answer ({out.stderr.strip()})"
    known = sorted(set(out.stdout.split()))
    if partition not in known:
        return f"resources.partition: Slurm has no partition {partition!r}; sinfo lists: {', '.join(known)}"
    return None


_GRES_ITEM = re.compile(r",(?![^(]*\))")  # commas between GRES, not those inside "(S:0,1)"


def gpu_count(gres: str) -> int:
    """GPUs in one node's GRES as sinfo prints it (%G): `gpu:4`, `gpu:h100:4(S:0-1)`, `gpu:a100:8(S:0,1)`,
    several GRES (`gpu:a100:4,gpu:v100:2,nvme:1`), MIG profiles (`gpu:1g.10gb:7`: 7 GPUs to Slurm), `(null)`."""
    total = 0
    for item in _GRES_ITEM.split(gres.strip()):
        parts = item.split("(")[0].split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def partition_limits(partition: str) -> dict | None:
    """What one node of the partition offers and how many nodes it has (sinfo), or None without Slurm.
    {nodes, cpus (per node, the smallest), gpus (per node, the smallest)}."""
    out = _run("sinfo", "--noheader", "--partition", partition, "--format=%D|%c|%G")
    if out is None or out.returncode != 0 or not out.stdout.strip():
        return None
    rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
    gpus = [gpu_count(gres) for _, _, gres in rows]
    return {
        "nodes": sum(int(n) for n, _, _ in rows),
        "cpus": min(int(c.rstrip("+")) for _, c, _ in rows),
        "gpus": min(gpus),
    }


def first_host(nodelist: str) -> str:
    """Where rank 0 of a job on `nodelist` runs: the first node's address (`node[01-04]` -> node01's NodeAddr,
    which is its host name on most clusters, 127.0.0.1 for the local cluster's extra nodes)."""
    out = _run("scontrol", "show", "hostnames", nodelist)
    first = out.stdout.split()[0] if out is not None and out.returncode == 0 and out.stdout.split() else nodelist
    node = _run("scontrol", "show", "node", first, "--oneliner")
    addr = [
        w.split("=", 1)[1]
        for w in (node.stdout.split() if node and node.returncode == 0 else [])
        if w.startswith("NodeAddr=")
    ]
    return addr[0] if addr else first


def requeue(job_id: str) -> None:
    """Ask Slurm to end this run of the job and queue it again (`scontrol requeue`); raises if it refuses."""
    out = _run("scontrol", "requeue", job_id)
    if out is None or out.returncode != 0:
        raise RuntimeError(f"scontrol requeue {job_id} failed: {out.stderr.strip() if out else 'no scontrol'}")


def live_jobs(job_ids: list[str]) -> list[str]:
    """Those of job_ids (jobs, arrays, or array tasks as <array>_<task>) that squeue still lists, pending or
    running; an array is live while any of its tasks is."""
    out = _run("squeue", "--noheader", "--array", "--format=%i", "--jobs", ",".join(job_ids)) if job_ids else None
    if out is None:
        return []
    listed = set(out.stdout.split())
    return sorted(j for j in job_ids if j in listed or j in {line.split("_")[0] for line in listed})


SCHEDULER_DEFAULTS = {"MaxArraySize": 1001, "MaxJobCount": 10000}


def scheduler_limits() -> dict[str, int]:
    """The cluster's MaxArraySize (an array task's index stays below it) and MaxJobCount (jobs the controller
    holds at once, each array task one), from `scontrol show config`; Slurm's defaults where it does not say."""
    out = _run("scontrol", "show", "config")
    text = out.stdout if out is not None and out.returncode == 0 else ""
    limits = dict(SCHEDULER_DEFAULTS)
    for key in limits:
        match = re.search(rf"^{key}\s*=\s*(\d+)", text, re.MULTILINE)
        if match:
            limits[key] = int(match.group(1))
    return limits


def job_records(job_ids: list[str]) -> dict[str, dict]:
    """job id (array tasks as <array>_<task>) -> name, state, exit code, submit/start/end, and queue wait
    (start - submit, in seconds; None until the job starts), from sacct; empty where sacct is missing.
    Job steps (.batch, .0) are left out."""
    fields = "JobID,JobName,State,ExitCode,Submit,Start,End"
    out = (
        _run("sacct", "--noheader", "--parsable2", f"--format={fields}", "--jobs", ",".join(job_ids))
        if job_ids
        else None
    )
    if out is None:
        return {}
    rows = {}
    for line in out.stdout.splitlines():
        job, name, state, code, submit, start, end = line.split("|")
        if "." in job:
            continue
        started = start not in ("Unknown", "None", "")
        wait = (
            datetime.fromisoformat(start).timestamp() - datetime.fromisoformat(submit).timestamp() if started else None
        )
        rows[job] = {
            "name": name,
            "state": state.split()[0] if state else "?",
            "exit_code": code,
            "submit": submit,
            "start": start,
            "end": end,
            "queue_wait_s": wait,
        }
    return rows


def job_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> Slurm state (PENDING, RUNNING, COMPLETED, FAILED, ...)."""
    return {job: r["state"] for job, r in job_records(job_ids).items()}


def job_times(job_ids: list[str]) -> dict[str, dict]:
    """The jobs that started: name, state, submit/start/end and queue wait, for the report."""
    keys = ("name", "state", "submit", "start", "end", "queue_wait_s")
    return {job: {k: r[k] for k in keys} for job, r in job_records(job_ids).items() if r["queue_wait_s"] is not None}
