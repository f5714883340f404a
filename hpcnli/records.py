"""What one stage writes and another reads: typed, versioned records with one reader and one writer each.

    TestManifest  test_set.json                          written by planning, read by evaluate, state, reduce
    TrainMetrics  train_metrics.json                     written by finetune, read by state, reduce, time plan
    ShardMetrics  predictions/<model>/shard_NNNN.metrics  written by evaluate, read by state and reduce
    Report        report.json                            written by reduce, read by the markdown and the index

A record is read with `read(path)` (or `from_json(data, source)`) and written with `write(path)`. A field
that a record's version must have and the file lacks is a refusal that names the file and the field, never
"an older run": an absent value is not trusted. Fields a record gained later are marked `since(N)`; a record
of an older version holds None there. Files written before records carried `schema_version` are read as the
version whose fields they hold (`unversioned_version`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hpcnli.io import RunFileError, read_json, write_json


class RecordError(RunFileError):
    """A run file whose content is not the record it should hold."""


def since(version: int) -> Any:
    """A field added in `version`: records of older versions hold None there."""
    return field(default=None, metadata={"since": version})


_SIMPLE = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,), list: (list,)}


def _type_ok(value: Any, tp: Any) -> bool:
    """A light check of JSON values against the field's annotation (nested records are checked by their class)."""
    if value is None:
        return type(None) in typing.get_args(tp) or tp is Any
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp) if a is not type(None))
    base = origin or tp
    if base is Any or dataclasses.is_dataclass(base):
        return True
    kinds = _SIMPLE.get(base)
    if kinds is None:
        return True
    return isinstance(value, kinds) and (base is bool or not isinstance(value, bool))


@dataclass(frozen=True, kw_only=True)
class Record:
    VERSION: ClassVar[int] = 1
    NAME: ClassVar[str] = "record"  # the file, as messages name it

    schema_version: int

    @classmethod
    def unversioned_version(cls, data: dict) -> int:
        """The version of a file written before records carried schema_version."""
        return 1

    @classmethod
    def _fields(cls, version: int) -> dict[str, dataclasses.Field]:
        return {
            f.name: f
            for f in dataclasses.fields(cls)
            if f.name != "schema_version" and f.metadata.get("since", 1) <= version
        }

    @classmethod
    def _required(cls, data: dict, version: int) -> set[str]:
        return set(cls._fields(version))

    @classmethod
    def _decode(cls, name: str, value: Any, source: str) -> Any:
        return value

    @classmethod
    def from_json(cls, data: Any, source: str) -> Any:
        if not isinstance(data, dict):
            raise RecordError(
                f"{source}: expected a JSON object ({cls.NAME}), got {type(data).__name__}; "
                "restore the file, or redo the stage that writes it"
            )
        version = data.get("schema_version", None)
        if version is None:
            version = cls.unversioned_version(data)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= cls.VERSION:
            raise RecordError(
                f"{source}: {cls.NAME} schema_version {version!r} is not one this hpcnli reads "
                f"(1 to {cls.VERSION}); use the hpcnli that wrote it, or redo the stage"
            )
        known = cls._fields(version)
        missing = sorted(cls._required(data, version) - data.keys())
        unknown = sorted(data.keys() - known.keys() - {"schema_version"})
        if missing or unknown:
            what = "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            )
            raise RecordError(
                f"{source}: not a {cls.NAME} of version {version} ({what}); restore the file, or redo "
                "the stage that writes it"
            )
        hints = typing.get_type_hints(cls)
        values = {}
        for name in known.keys() & data.keys():  # absent and not required: the field's default
            value = data[name]
            if not _type_ok(value, hints[name]):
                raise RecordError(
                    f"{source}: {name} is {type(value).__name__} {value!r:.60}, not "
                    f"{getattr(hints[name], '__name__', hints[name])}; restore the file, or redo the stage"
                )
            values[name] = cls._decode(name, value, source)
        return cls(schema_version=version, **values)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for name in self._fields(self.schema_version):
            value = getattr(self, name)
            out[name] = value.to_json() if isinstance(value, Record) else value
        return out

    @classmethod
    def read(cls, path: Path) -> Any:
        return cls.from_json(read_json(path), str(path))

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


@dataclass(frozen=True, kw_only=True)
class TrainMetrics(Record):
    """The fine-tune's outcome, written beside the adapter (rank 0).

    Version 1: no `inputs` (written before adapters recorded what they were trained from). Version 2: inputs
    hashed with config.train_hash_v1 (log and checkpoint intervals counted). Version 3: config.train_hash.
    Version 4: the held-out curve, the adapter kept and why training ended."""

    VERSION: ClassVar[int] = 4
    NAME: ClassVar[str] = "train_metrics.json"

    train_examples: int
    train_source: str
    dropped: int
    steps: int
    examples_seen: int
    epochs: int
    restarts: int
    runtime_s: float
    model_load_s: float
    examples_per_s: float
    tokens_per_s: float
    final_loss: float | None
    best_loss: float | None
    loss_curve: list
    parameters: dict
    memory: dict
    effective_batch_size: float
    num_processes: int
    device: str
    adapter_bytes: int
    memory_estimate: dict | None = since(2)
    dtype: str | None = since(2)
    nodes: int | None = since(2)
    batch: str | None = since(2)
    batch_tokens: int | None = since(2)
    gradient_checkpointing: bool | None = since(2)
    per_process_batch_size: int | None = since(2)
    inputs: dict | None = since(2)
    memory_per_rank: list | None = since(3)  # each data-parallel rank's peaks; `memory` is their maximum
    # train.eval_every: the held-out points (step, examples_seen, pairs, accuracy, ci_low, ci_high, loss, seconds)
    heldout_curve: list | None = since(4)
    heldout_pairs: int | None = since(4)
    heldout_s: float | None = since(4)  # scoring them, within runtime_s (the throughputs leave it out)
    best_step: int | None = since(4)  # the held-out point with the best accuracy (lower loss at equal accuracy)
    kept: str | None = since(4)  # train.keep: the adapter written is the last step's or the best step's
    adapter_step: int | None = since(4)  # the step of the adapter written (the evaluation stage scores it)
    ended: str | None = since(4)  # why training ended: its steps or epochs done, or early stopping

    @classmethod
    def unversioned_version(cls, data: dict) -> int:
        return 2 if "inputs" in data else 1


@dataclass(frozen=True, kw_only=True)
class ShardMetrics(Record):
    """One eval shard's provenance and cost, written after its predictions file.

    Version 1 (unversioned files) had no test-set or adapter hash; some carry share_prefix and batch_tokens.
    Version 5: base shards record base_hash (a sweep's runs share them)."""

    VERSION: ClassVar[int] = 5
    NAME: ClassVar[str] = "shard metrics"
    OPTIONAL_IN_V1: ClassVar[frozenset] = frozenset(
        {"share_prefix", "batch_tokens", "memory_estimate", "test_content_hash", "adapter_sha256"}
    )

    model: str
    shard: int
    num_shards: int
    examples: int
    config_hash: str
    runtime_s: float
    model_load_s: float
    weights_from: str | None = since(2)
    examples_per_s: float | None
    batch_size: int
    dtype: str
    weights: str
    quantized_4bit: bool
    device: str
    memory: dict
    started_at: str
    finished_at: str
    job: dict
    share_prefix: bool | None = since(2)
    batch_tokens: int | None = since(2)
    memory_estimate: dict | None = since(2)
    test_content_hash: str | None = since(2)
    adapter_sha256: str | None = since(2)
    weights_wait_s: float | None = since(3)  # waiting for another shard to write the eval weights (in load)
    warmup_s: float | None = since(3)  # the first batch (kernel warm-up), within runtime_s
    warmup_examples: int | None = since(3)
    steady_examples_per_s: float | None = since(3)  # the batches after the first
    predictions_sha256: str | None = since(3)  # ties the predictions file to these metrics
    matmul: str | None = since(4)  # precision of float32 products: float32, tf32, bf16 (hpcnli.scoring.precision)
    rescore_margin: float | None = since(4)  # nats; None: nothing re-scored (full float32 products)
    rescored: int | None = since(4)  # pairs re-scored in full float32 (their two best scores within the margin)
    rescore_changed: int | None = since(4)  # of those, pairs whose prediction the float32 scores changed
    rescore_max_shift: float | None = since(4)  # the largest score change the re-scoring saw (nats)
    # base shards: what the base model's predictions depend on (config.hashing.base_settings); a base shard is
    # current for every config with this hash, so a sweep's runs share one base evaluation
    base_hash: str | None = since(5)

    @classmethod
    def unversioned_version(cls, data: dict) -> int:
        return 2 if "weights_from" in data else 1

    @classmethod
    def _fields(cls, version: int) -> dict[str, dataclasses.Field]:
        fields = super()._fields(version)
        if version == 1:  # unversioned files held some of the later fields
            fields.update({f.name: f for f in dataclasses.fields(cls) if f.name in cls.OPTIONAL_IN_V1})
        return fields

    @classmethod
    def _required(cls, data: dict, version: int) -> set[str]:
        return set(cls._fields(version)) - (cls.OPTIONAL_IN_V1 if version == 1 else set())


@dataclass(frozen=True, kw_only=True)
class TestManifest(Record):
    """test_set.json: the planned test set (its example ids in order, and what they hash to), written when the
    run is planned, read by every eval shard, the reducer and --resume. Version 2 added the content hash,
    version 3 the count of test pairs that are also training pairs."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name
    VERSION: ClassVar[int] = 3
    NAME: ClassVar[str] = "test_set.json"

    source: str
    examples: int
    dropped: int
    ids_hash: str
    ids: list
    content_hash: str | None = since(2)
    train_overlap: int | None = since(3)

    @classmethod
    def unversioned_version(cls, data: dict) -> int:
        return 2 if "content_hash" in data else 1

    def summary(self) -> dict:
        """What the report keeps of it: everything but the ids."""
        return {k: v for k, v in self.to_json().items() if k != "ids"}


@dataclass(frozen=True, kw_only=True)
class Report(Record):
    """report.json: everything report.md shows, complete (accuracies) or not (the problems)."""

    VERSION: ClassVar[int] = 1
    NAME: ClassVar[str] = "report.json"
    WHEN_COMPLETE: ClassVar[tuple[str, ...]] = ("models", "comparison", "fixed_examples", "broken_examples")
    WHEN_INCOMPLETE: ClassVar[tuple[str, ...]] = ("problems", "missing_examples")

    run: str
    config: dict
    config_hash: str
    test_set: dict
    training: TrainMetrics | None
    shards: dict
    provenance: dict | None
    slurm_jobs: dict
    complete: bool
    # Complete reports (WHEN_COMPLETE) and incomplete ones (WHEN_INCOMPLETE) hold one group; the other is empty.
    models: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    fixed_examples: list = field(default_factory=list)
    broken_examples: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    missing_examples: int = 0

    @classmethod
    def _required(cls, data: dict, version: int) -> set[str]:
        other = cls.WHEN_INCOMPLETE if data.get("complete") else cls.WHEN_COMPLETE
        return set(cls._fields(version)) - set(other)

    @classmethod
    def _decode(cls, name: str, value: Any, source: str) -> Any:
        if name == "training" and value is not None:
            return TrainMetrics.from_json(value, f"{source} (training)")
        if name == "shards":
            return {
                model: [ShardMetrics.from_json(s, f"{source} (shards of {model})") for s in shards]
                for model, shards in value.items()
            }
        return value

    def to_json(self) -> dict:
        out = super().to_json()
        out["shards"] = {m: [s.to_json() for s in shards] for m, shards in self.shards.items()}
        for name in self.WHEN_INCOMPLETE if self.complete else self.WHEN_COMPLETE:
            out.pop(name)
        return out


@dataclass(frozen=True, kw_only=True)
class SweepPlan(Record):
    """sweep.json: a sweep as planned (hpcnli.sweeps.grid); its runs are ordinary run directories beside it."""

    VERSION: ClassVar[int] = 1
    NAME: ClassVar[str] = "sweep.json"

    name: str
    config: str  # the base run config, as given
    overrides: list  # key=value given to every point
    grid: dict  # swept key -> its values (override text), in the order given
    seeds: list
    points: list  # {point: "p00", settings: {key: value}}
    runs: list  # {run: "p00-s0", point, seed, base_owner: the run whose base shards it reads}
    base_groups: dict  # base hash (config.hashing.base_settings) -> the run that scores the base model
    provenance: dict


@dataclass(frozen=True, kw_only=True)
class SweepReport(Record):
    """A sweep's report.json: every run's figures, the points ranked on held-out accuracy, the winner and the
    paired tests of the winner against each other point (hpcnli.sweeps.compare)."""

    VERSION: ClassVar[int] = 1
    NAME: ClassVar[str] = "sweep report.json"

    sweep: str
    complete: bool  # every run's report complete
    selection: str  # how the winner was chosen (never on the test file)
    grid: dict
    seeds: list
    runs: list  # per point x seed: held-out accuracy, test accuracy, training time, peak memory, its report
    points: list  # per point, ranked: held-out and test mean and sd over seeds
    winner: dict | None
    comparisons: list  # the winner against each other point: difference, CI, p, Holm-adjusted p
    base: list  # each base group's base-model accuracy
    problems: list  # runs left out, and why
    provenance: dict
