"""Golden files for the sbatch text submitit generates and for what the shipped scripts run.

Config values and paths with spaces, quotes and `'; touch x'` must reach Slurm or the program as
data, never as shell. Regenerate after an intended change with:
    HPCNLI_REGEN_GOLDEN=1 python -m pytest tests/test_sbatch_golden.py
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from hpcnli.config import ResourcesConfig, load_config
from hpcnli.launch.slurm import executor_for
from hpcnli.run.paths import RunPaths
from hpcnli.run.stages import SIGNAL_LEAD_S, STAGES, TIME_LIMIT_SIGNAL

GOLDEN = Path(__file__).parent / "golden"
WEIRD_RUN = "/runs/it's a run; touch y"
WEIRD = [
    "resources.account=my account",
    'resources.qos=it\'s "q"',
    "resources.extra_sbatch={comment: \"'; touch x'\", mail-type: END}",
]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HPCNLI_REGEN_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"missing {path}; create it with HPCNLI_REGEN_GOLDEN=1 python -m pytest {__file__}"
    assert text == path.read_text(), (
        f"{name} differs from the golden file; if the change is intended, "
        f"regenerate with HPCNLI_REGEN_GOLDEN=1 python -m pytest {__file__}"
    )


@pytest.mark.parametrize("stage", ["finetune", "eval-base", "reduce"])
def test_submitit_sbatch_text(stage):
    cfg = load_config(ROOT / "jobs/smoke.yaml", WEIRD + ["resources.gpus_per_node=1"])
    text = executor_for(cfg, RunPaths(WEIRD_RUN), stage)._make_submission_file_text("COMMAND", "uid")
    check_golden(f"submitit_{stage}.sbatch", text)
    # Hostile values appear only inside #SBATCH directives (comments to bash) or as one quoted srun word.
    assert all(line.startswith(("#SBATCH --", "srun ")) for line in text.splitlines() if "touch" in line)
    parsed = dict(
        shlex.split(line[len("#SBATCH --") :])[0].split("=", 1)
        for line in text.splitlines()
        if line.startswith("#SBATCH --") and "=" in line
    )
    assert parsed["comment"] == "'; touch x'" and parsed["account"] == "my account"
    assert parsed["qos"] == 'it\'s "q"'


@pytest.mark.parametrize("eval_cpus,expected", [(None, "2"), (1, "1")])
def test_eval_tasks_ask_for_eval_cpus_per_task(eval_cpus, expected):
    extra = ["resources.cpus_per_task=2"] + ([f"resources.eval_cpus_per_task={eval_cpus}"] if eval_cpus else [])
    cfg = load_config(ROOT / "jobs/smoke.yaml", extra)
    cpus = {
        stage: re.search(
            r"^#SBATCH --cpus-per-task=(\d+)$",
            executor_for(cfg, RunPaths("/runs/r"), stage)._make_submission_file_text("C", "u"),
            re.MULTILINE,
        ).group(1)
        for stage in ("finetune", "eval-base", "eval-finetuned", "reduce")
    }
    assert cpus == {"finetune": "2", "eval-base": expected, "eval-finetuned": expected, "reduce": "1"}


@pytest.mark.parametrize(
    "script,args",
    [
        ("finetune.sh", ["RUN", "CONFIG"]),
        ("eval_array.sh", ["RUN", "finetuned", "CONFIG"]),
        ("reduce.sh", ["RUN"]),
    ],
)
def test_shipped_script_passes_arguments_verbatim(tmp_path, script, args):
    """Run the script with bash and a recording stand-in for python: argv must arrive unchanged."""
    record = tmp_path / "argv.jsonl"
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake_python.chmod(0o755)
    run_dir = tmp_path / "run with 'quotes' ; touch x $(touch z)"
    config = tmp_path / "my config's.yaml"
    real = [str(run_dir) if a == "RUN" else str(config) if a == "CONFIG" else a for a in args]
    subprocess.run(
        ["bash", ROOT / "slurm" / script, *real],
        cwd=tmp_path,
        check=True,
        env={**os.environ, "HPCNLI_PYTHON": str(fake_python)},
    )
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    text = "\n".join(json.dumps(c).replace(str(tmp_path), "TMP") for c in calls) + "\n"
    check_golden(f"script_{script}.argv", text)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_data_parallel_fine_tune_asks_for_one_task_per_gpu_and_eval_tasks_for_one_gpu():
    cfg = load_config(ROOT / "jobs/smoke.yaml", ["resources.gpus_per_node=4", "resources.nodes=2"])
    text = {
        stage: executor_for(cfg, RunPaths("/runs/r"), stage)._make_submission_file_text("C", "u")
        for stage in ("finetune", "eval-base", "reduce")
    }
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"} <= set(
        text["finetune"].splitlines()
    )
    assert "--kill-on-bad-exit=1" in text["finetune"]  # one rank lost stops the others
    assert {"#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1"} <= set(
        text["eval-base"].splitlines()
    )
    assert "gpus-per-node" not in text["reduce"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_sbatch_script_defaults_are_the_stage_table_defaults(stage):
    """slurm/*.sh by hand asks for what `python -m hpcnli.submit --partition` asks for with the default config."""
    header = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", (ROOT / stage.script).read_text(), re.M))
    wanted = stage.resources(ResourcesConfig())
    minutes = int(header["time"].split(":")[0]) * 60 + int(header["time"].split(":")[1])
    assert (minutes, header["mem"], int(header["cpus-per-task"]), header["partition"]) == (
        wanted["time"],
        wanted["mem"],
        wanted["cpus_per_task"],
        wanted["partition"],
    )
    if stage.requeued:  # the time-limit warning the fine-tune checkpoints on, sent to the shell that exec becomes
        assert (
            header["signal"] == f"B:{TIME_LIMIT_SIGNAL}@{SIGNAL_LEAD_S}"
            and "#SBATCH --requeue" in (ROOT / stage.script).read_text()
        )
