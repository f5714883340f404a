"""NLI data: SNLI from the Hub, from local files (HF or original Stanford format), or synthetic.

Every example is a dict {id, premise, hypothesis, label} with label 0 = entailment,
1 = neutral, 2 = contradiction, and an id that stays the same across runs and machines.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from hpcnli.data import synthetic
from hpcnli.errors import UserFacingError

LABELS = ("entailment", "neutral", "contradiction")
STANFORD_LABELS = {name: i for i, name in enumerate(LABELS)}


def visible(text) -> bool:
    """Text that shows something: not only spaces, controls (NUL), format characters (U+200B, U+2060, U+FEFF)."""
    return isinstance(text, str) and any(
        not (c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Cs", "Co", "Cn")) for c in text
    )


FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(UserFacingError, ValueError):
    """A data source that cannot be used, with what to change."""


@dataclass
class NLIData:
    examples: list[dict]
    source: str
    dropped: int  # rows without a gold label

    @property
    def ids_hash(self) -> str:
        return hashlib.sha256("\n".join(e["id"] for e in self.examples).encode()).hexdigest()[:16]

    @property
    def content_hash(self) -> str:
        """Of every example's id, premise, hypothesis and label, in order: ids alone (`<file>-<row>`) miss
        an edited premise or label."""
        rows = ([e["id"], e["premise"], e["hypothesis"], e["label"]] for e in self.examples)
        return hashlib.sha256("\n".join(json.dumps(r) for r in rows).encode()).hexdigest()[:16]


def shard_bounds(n_examples: int, n_shards: int, index: int) -> tuple[int, int]:
    """Half-open [lo, hi) slice of shard `index`; slices are disjoint, contiguous and cover [0, n)."""
    if not 0 <= index < n_shards:
        raise ValueError(f"shard index {index} outside 0..{n_shards - 1}")
    return index * n_examples // n_shards, (index + 1) * n_examples // n_shards


def _check_jsonl(path: Path) -> None:
    """Name the first line that is not UTF-8 or not JSON (datasets' own error does not)."""
    row = 0  # rows are the non-blank lines, as datasets reads them
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {lineno} is not UTF-8 text; re-encode the file as UTF-8") from None
            if text.strip():
                row += 1
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}: line {lineno} is not valid JSON ({e.msg}); each line must be one JSON object"
                    ) from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {lineno} is a JSON {type(obj).__name__}, not an object")
                label = obj.get("label", 0)  # checked here as written: datasets casts a mixed column to text
                if "label" in obj and not (isinstance(label, int) and not isinstance(label, bool)):
                    raise DataError(
                        f"{path}: row {row}: label {label!r} must be an integer 0, 1, 2 (or -1 for none); "
                        "files with label names use the Stanford columns sentence1/sentence2/gold_label"
                    )


def _load_file(path: Path):
    import datasets

    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(
                f"{path}: a loop of symbolic links; point data.train / data.test at the file itself"
            ) from None
        raise DataError(
            f"{path}: no such file; check data.train / data.test (SNLI for offline runs lies in ../shared/snli)"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: a directory; name a data file in it (e.g. {path}/test.jsonl)")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file (a FIFO, socket or device); copy the data to a file")
    if st.st_size == 0:
        raise DataError(f"{path}: an empty file; it holds no pairs")
    fmt = FILE_FORMATS.get(path.suffix)
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if path.suffix == ".jsonl":
        _check_jsonl(path)
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a local file reads in a moment: its "Generating train split" bar is noise
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(e) or not str(e).strip():
            raise DataError(f"{path}: holds no pairs (a header only, or blank lines)") from None
        raise DataError(f"{path}: could not be read as {fmt}: {e}") from None
    finally:
        if was_on:
            datasets.enable_progress_bars()
    if len(ds) == 0:
        raise DataError(f"{path}: holds no pairs (a header only, or blank lines)")
    return ds


def _rows_from_columns(ds, where: str, id_prefix: str) -> tuple[list[dict], int]:
    cols = set(ds.column_names)
    if {"premise", "hypothesis", "label"} <= cols:
        premise, hypothesis, label = "premise", "hypothesis", "label"
        stanford = False
    elif {"sentence1", "sentence2", "gold_label"} <= cols:
        premise, hypothesis, label = "sentence1", "sentence2", "gold_label"
        stanford = True
    else:
        raise DataError(
            f"{where}: columns {sorted(cols)} lack premise/hypothesis/label "
            "(Hugging Face format) or sentence1/sentence2/gold_label (Stanford format)"
        )
    rows, dropped = [], 0
    for i, r in enumerate(ds):
        gold = r[label]
        if stanford:
            if gold == "-" or gold is None:
                dropped += 1
                continue
            if gold not in STANFORD_LABELS:
                raise DataError(
                    f"{where}: row {i + 1}: gold_label {gold!r} is not one of {list(STANFORD_LABELS)} or '-'"
                )
            gold = STANFORD_LABELS[gold]
        else:
            if isinstance(gold, bool) or not isinstance(gold, int):
                raise DataError(
                    f"{where}: row {i + 1}: label {gold!r} must be an integer 0, 1, 2 (or -1 for none); "
                    "files with label names use the Stanford columns sentence1/sentence2/gold_label"
                )
            if gold == -1:
                dropped += 1
                continue
            if gold not in (0, 1, 2):
                raise DataError(
                    f"{where}: row {i + 1}: label {gold} is out of range; use 0 entailment, "
                    "1 neutral, 2 contradiction, -1 no gold label"
                )
        p, h = r[premise], r[hypothesis]
        if not visible(p):
            raise DataError(f"{where}: row {i + 1}: empty or missing premise (no visible character)")
        if not visible(h):
            raise DataError(f"{where}: row {i + 1}: empty or missing hypothesis (no visible character)")
        ex_id = str(r["pairID"]) if stanford and r.get("pairID") else f"{id_prefix}-{i:06d}"
        rows.append({"id": ex_id, "premise": p, "hypothesis": h, "label": gold})
    return rows, dropped


def load_source(source: str, split: str, synthetic_size: int) -> NLIData:
    """Load one data source string of the config (see DataConfig)."""
    if source == "synthetic":
        return NLIData(synthetic.generate(split, synthetic_size), f"synthetic:{split}", 0)
    if source.startswith("hub:"):
        parts = source.split(":")
        if len(parts) != 3:
            raise DataError(
                f"data.{split}: {source!r} must read hub:<dataset id>:<split>, e.g. hub:stanfordnlp/snli:test"
            )
        _, repo, hub_split = parts
        import datasets

        try:
            ds = datasets.load_dataset(repo, split=hub_split)
        except Exception as e:
            raise DataError(
                f"data.{split}: could not load {repo!r} split {hub_split!r} from the Hugging Face Hub "
                f"({type(e).__name__}: {str(e)[:200]}). Offline, point data.{split} at a local file "
                "such as ../shared/snli/test.jsonl"
            ) from None
        rows, dropped = _rows_from_columns(ds, source, f"{repo.split('/')[-1]}-{hub_split}")
        return NLIData(rows, source, dropped)
    path = Path(source).expanduser()
    ds = _load_file(path)
    rows, dropped = _rows_from_columns(ds, str(path), path.stem)
    if not rows:
        raise DataError(f"{path}: no example with a gold label")
    return NLIData(rows, str(path), dropped)


def subset(data: NLIData, max_examples: int, seed: int) -> NLIData:
    """A seeded random subset, kept in the source's order; max_examples = 0 keeps everything."""
    if max_examples <= 0 or max_examples >= len(data.examples):
        return data
    keep = sorted(random.Random(seed).sample(range(len(data.examples)), max_examples))
    return NLIData([data.examples[i] for i in keep], data.source, data.dropped)


def split_holdout(data: NLIData, n: int, seed: int) -> tuple[NLIData, NLIData]:
    """(rest, held out): n seeded random examples set aside, both kept in the source's order."""
    if n >= len(data.examples):
        raise DataError(
            f"data.holdout: {n} would leave nothing to train on ({data.source} has "
            f"{len(data.examples)} examples with a gold label); make it smaller"
        )
    held = set(random.Random(seed + 2).sample(range(len(data.examples)), n)) if n else set()
    pick = lambda inside: [e for i, e in enumerate(data.examples) if (i in held) == inside]  # noqa: E731
    return (NLIData(pick(False), data.source, data.dropped), NLIData(pick(True), f"holdout:{n}:{data.source}", 0))


def load_split(cfg, split: str) -> NLIData:
    """The train, test or holdout examples of a run config, hold-out and subset applied (the holdout split is
    data.holdout's pairs whatever data.test is)."""
    d = cfg.data
    if split == "holdout":
        return split_holdout(load_source(d.train, "train", d.synthetic_train_size), d.holdout, d.subset_seed)[1]
    if split == "train" or d.test == "holdout":
        rest, held = split_holdout(load_source(d.train, "train", d.synthetic_train_size), d.holdout, d.subset_seed)
        if split == "train":
            return subset(rest, d.max_train_examples, d.subset_seed)
        data = held
    else:
        data = load_source(d.test, "test", d.synthetic_test_size)
    return subset(data, d.max_test_examples, d.subset_seed + 1)
