"""Every file name of a run comes from here; no stage assembles a path itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS = ("base", "finetuned")


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
    def plan(self) -> Path:
        return self.run_dir / "plan.json"

    @property
    def provenance(self) -> Path:
        return self.run_dir / "provenance.json"

    @property
    def lock(self) -> Path:
        return self.run_dir / ".lock"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def adapter(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def train_metrics(self) -> Path:
        return self.run_dir / "train_metrics.json"

    @property
    def test_manifest(self) -> Path:
        return self.run_dir / "test_set.json"

    def shard_dir(self, model: str) -> Path:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        return self.run_dir / "predictions" / model

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
