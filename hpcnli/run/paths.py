"""Every file name of a run comes from here (as submitit's JobPaths); no other module assembles one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MODELS = ("base", "finetuned")
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file name for the adapter's weights


def _model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return model


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir).resolve())

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def ledger(self) -> Path:
        """The submissions ledger (run.ledger): every batch of Slurm jobs sent for the run."""
        return self.run_dir / "plan.json"

    @property
    def memory_plan(self) -> Path:
        """Each stage's estimated peak memory and the budgets chosen from it (run.memory_plan)."""
        return self.run_dir / "memory_plan.json"

    @property
    def provenance(self) -> Path:
        return self.run_dir / "provenance.json"

    @property
    def lock(self) -> Path:
        return self.run_dir / ".lock"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def stage_log(self, name: str) -> Path:
        """The log of one stage process of the local executor (eval_base_0, reduce, ...)."""
        return self.logs / f"{name}.log"

    @property
    def submitit_folder(self) -> Path:
        """submitit's folder pattern for a Slurm job's files (%j: the job id)."""
        return self.logs / "%j"

    @property
    def adapter(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def adapter_weights(self) -> Path:
        return self.adapter / ADAPTER_WEIGHTS

    @property
    def adapter_config(self) -> Path:
        return self.adapter / "adapter_config.json"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """A resumable checkpoint (written aside, then renamed into place: a directory there is complete)."""
        return self.checkpoints / f"step_{step:07d}"

    def other_checkpoints(self, keep: Path) -> list[Path]:
        return [p for p in self.checkpoints.glob("step_*") if p != keep]

    @staticmethod
    def checkpoint_adapter(checkpoint: Path) -> Path:
        return checkpoint / "adapter"

    @staticmethod
    def checkpoint_trainer(checkpoint: Path) -> Path:
        """Optimizer, schedule, RNG and loop state."""
        return checkpoint / "trainer.pt"

    @staticmethod
    def checkpoint_complete(checkpoint: Path) -> Path:
        return checkpoint / "COMPLETE"

    @property
    def best_adapters(self) -> Path:
        """train.keep: best: the adapters of the best held-out steps so far, one directory per step."""
        return self.run_dir / "best_adapters"

    def best_adapter(self, step: int) -> Path:
        return self.best_adapters / f"step_{step:07d}"

    @staticmethod
    def step_of(directory: Path) -> int:
        return int(directory.name.removeprefix("step_"))

    @property
    def tensorboard(self) -> Path:
        """train.log_with: tensorboard: the event files (`tensorboard --logdir <run>/tensorboard`)."""
        return self.run_dir / "tensorboard"

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoints whose writing finished (they hold a COMPLETE marker), oldest first."""
        return sorted(marker.parent for marker in self.checkpoints.glob("step_*/COMPLETE"))

    @property
    def eval_weights_root(self) -> Path:
        """The models the shards score with, written once per run (deleted once the report is complete)."""
        return self.run_dir / "eval_weights"

    def eval_weights(self, model: str) -> Path:
        return self.eval_weights_root / _model(model)

    def eval_weights_lock(self, model: str) -> Path:
        return self.eval_weights_root / f".{_model(model)}.lock"

    def eval_weights_marker(self, model: str) -> Path:
        """Written last into the weights directory: the inputs the weights were made from."""
        return self.eval_weights(model) / "COMPLETE"

    @property
    def train_metrics(self) -> Path:
        return self.run_dir / "train_metrics.json"

    @property
    def test_manifest(self) -> Path:
        return self.run_dir / "test_set.json"

    def shard_dir(self, model: str) -> Path:
        return self.run_dir / "predictions" / _model(model)

    def shard_predictions(self, model: str, shard: int) -> Path:
        return self.shard_dir(model) / f"shard_{shard:04d}.jsonl"

    def shard_metrics(self, model: str, shard: int) -> Path:
        return self.shard_dir(model) / f"shard_{shard:04d}.metrics.json"

    @property
    def report_md(self) -> Path:
        return self.run_dir / "report.md"

    @property
    def report_json(self) -> Path:
        return self.run_dir / "report.json"

    def plot(self, name: str) -> Path:
        return self.run_dir / f"{name}.png"


def results_index(output_root: Path) -> Path:
    """The index of every run under output_root (`results/report.md`); it belongs to output_root, not to a run."""
    return Path(output_root) / "report.md"


SWEEP_PLAN = "sweep.json"  # what makes a directory a sweep's (hpcnli.sweeps.grid.SweepPaths)


def runs_under(output_root: Path) -> Iterator[RunPaths]:
    """The directories in output_root, and those of the sweeps there (a sweep's runs are one level down), in name
    order: every run that planning may learn a throughput from. Not all need be runs; readers check."""
    root = Path(output_root)
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if (p / SWEEP_PLAN).is_file():
            yield from (RunPaths(q) for q in sorted(p.iterdir()) if q.is_dir())
        elif p.is_dir():
            yield RunPaths(p)
