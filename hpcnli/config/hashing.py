"""Short hashes of a RunConfig: what its predictions depend on (`hash`) and what its adapter depends on
(`train_hash`, derived from the schema's `shapes_adapter` marks). Recorded in run files: a change to
what a hash covers makes earlier runs look stale, so each scheme that was ever written stays here."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from typing import Any

from hpcnli.config.checks import shapes_adapter


def short_hash(d: Any) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def plain(obj: Any) -> Any:
    """Tuples as lists, as YAML and JSON write them."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# Keys added to what predictions depend on after runs were written: at these values they are left out of
# the hash, so that those runs' shards stay current (auto is float32 on a CPU, as every earlier run scored).
LATER_PREDICTION_KEYS = {
    ("eval", "matmul"): "auto",
    ("eval", "rescore_margin"): 0.1,
    ("train", "eval_every"): 0,
    ("train", "eval_pairs"): 0,
    ("train", "keep"): "last",
    ("train", "early_stopping_patience"): 0,
    ("train", "log_with"): "none",
}


def prediction_hash(cfg) -> str:
    """Every key but resources, name and output_root (and LATER_PREDICTION_KEYS at their first values)."""
    d = cfg.to_dict()
    for k in ("resources", "name", "output_root"):
        d.pop(k)
    return short_hash(_without_later_keys(d))


# What the base model's predictions depend on: the model, its prompt and scoring, how it is evaluated and the test
# pairs; not the adapter's recipe. A sweep's runs with equal base hashes share one base evaluation.
BASE_SECTIONS = ("model", "quantization", "task", "eval")
TEST_DATA_KEYS = ("test", "max_test_examples", "synthetic_test_size", "subset_seed")


def base_settings(cfg) -> dict[str, Any]:
    """The config values the base model's predictions depend on (data.test "holdout" depends on the train source,
    task.scoring "head" on train.seed, which draws the untrained head)."""
    d = cfg.to_dict()
    out = {section: d[section] for section in BASE_SECTIONS}
    out["data"] = d["data"] if cfg.data.test == "holdout" else {k: d["data"][k] for k in TEST_DATA_KEYS}
    if cfg.task.scoring == "head":
        out["train.seed"] = cfg.train.seed
    return _without_later_keys(out)


def base_hash(cfg) -> str:
    return short_hash(base_settings(cfg))


def _without_later_keys(d: dict) -> dict:
    """The config dict without the LATER_PREDICTION_KEYS that hold their first values."""
    for (section, key), value in LATER_PREDICTION_KEYS.items():
        if section in d and d[section].get(key) == value:
            del d[section][key]
    return d


def adapter_keys(cls: Any) -> tuple[str, ...]:
    """Dotted keys of the fields marked shapes_adapter, and of the derived values a section names in
    ADAPTER_VALUES, in schema order."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += [f"{f.name}.{k}" for k in adapter_keys(tp)]
        elif shapes_adapter(f):
            keys.append(f.name)
    return tuple(keys) + getattr(cls, "ADAPTER_VALUES", ())


# Keys that shape the adapter added after adapters were written: at these values they are left out of the hash,
# so that those adapters stay current (held-out evaluation off trains as before).
LATER_ADAPTER_KEYS = {
    "train.eval_every": 0,
    "train.eval_pairs": 0,
    "train.keep": "last",
    "train.early_stopping_patience": 0,
}


def adapter_settings(cfg) -> dict[str, Any]:
    """{dotted key: value} for every key in adapter_keys (LATER_ADAPTER_KEYS at their first values left out)."""
    values = {key: plain(functools.reduce(getattr, key.split("."), cfg)) for key in adapter_keys(type(cfg))}
    return {k: v for k, v in values.items() if not (k in LATER_ADAPTER_KEYS and LATER_ADAPTER_KEYS[k] == v)}


def adapter_hash(cfg) -> str:
    return short_hash(adapter_settings(cfg))


def adapter_hash_v1(cfg) -> str:
    """Kept as it was written (train_metrics.json schema version 2); do not derive it from the schema."""
    d = cfg.to_dict()
    for k in ("resources", "name", "output_root", "eval"):
        d.pop(k)
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("test", "max_test_examples", "synthetic_test_size")}
    d["train_processes"] = cfg.resources.train_processes  # batch_size is per process
    return short_hash(_without_later_keys(d))
