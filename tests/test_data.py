"""hpcnli.data and hpcnli.synthetic: sharding, loading SNLI in its formats, error messages, subsets."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from hpcnli.config import load_config
from hpcnli.data import synthetic
from hpcnli.data.nli import DataError, NLIData, load_source, load_split, shard_bounds, subset

ROOT = Path(__file__).resolve().parents[1]
SNLI = Path(__file__).resolve().parents[2] / "shared" / "snli"
needs_snli = pytest.mark.skipif(
    not (SNLI / "test.jsonl").is_file(),
    reason=f"SNLI sample not found at {SNLI} (expected ../shared/snli from the repo root)",
)


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep the `datasets` cache of these small files out of ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-datasets-cache")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HF_ROWS = [
    {"premise": "A man plays a guitar.", "hypothesis": "A man plays music.", "label": 0},
    {"premise": "A man plays a guitar.", "hypothesis": "A man plays for a crowd.", "label": 1},
    {"premise": "A man plays a guitar.", "hypothesis": "A man is asleep.", "label": 2},
    {"premise": "Two dogs run.", "hypothesis": "Animals move.", "label": -1},
    {"premise": "Two dogs run.", "hypothesis": "Dogs are sleeping.", "label": 2},
]


# ------------------------------------------------------------------ shard_bounds


def _check_shards(n: int, shards: int) -> None:
    bounds = [shard_bounds(n, shards, i) for i in range(shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, hi), (lo2, _) in itertools.pairwise(bounds):
        assert hi == lo2, (n, shards, bounds)  # contiguous, hence disjoint
    covered = [i for lo, hi in bounds for i in range(lo, hi)]
    assert covered == list(range(n)), (n, shards)
    sizes = [hi - lo for lo, hi in bounds]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1, (n, shards, sizes)


def test_shard_bounds_small_grid():
    for n in range(51):
        for shards in range(1, 13):
            _check_shards(n, shards)


@pytest.mark.parametrize("n, shards", [(4912, 7), (9842, 64), (550_152, 1000), (10**9 + 7, 997), (3, 100)])
def test_shard_bounds_large(n, shards):
    bounds = [shard_bounds(n, shards, i) for i in range(shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(hi == lo2 for (_, hi), (lo2, _) in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_shard_bounds_one_shard_is_everything():
    assert shard_bounds(17, 1, 0) == (0, 17)


@pytest.mark.parametrize("shards, index", [(4, 4), (4, -1), (1, 1), (0, 0)])
def test_shard_bounds_index_out_of_range(shards, index):
    with pytest.raises(ValueError, match="shard index"):
        shard_bounds(10, shards, index)


# ------------------------------------------------------------------ real SNLI sample


@pytest.fixture(scope="module")
def snli_test():
    return load_source(str(SNLI / "test.jsonl"), "test", 0)


@needs_snli
def test_snli_test_counts(snli_test):
    assert len(snli_test.examples) == 4912
    assert snli_test.dropped == 88
    assert snli_test.source == str(SNLI / "test.jsonl")


@needs_snli
def test_snli_validation_counts_labels_and_ids():
    data = load_source(str(SNLI / "validation.jsonl"), "train", 0)
    assert len(data.examples) == 9842 and data.dropped == 158
    assert {e["label"] for e in data.examples} == {0, 1, 2}
    ids = [e["id"] for e in data.examples]
    assert len(set(ids)) == len(ids)
    again = load_source(str(SNLI / "validation.jsonl"), "train", 0)
    assert [e["id"] for e in again.examples] == ids
    assert again.ids_hash == data.ids_hash


@needs_snli
def test_holdout_is_disjoint_from_training_and_stable():
    ov = [f"data.train={SNLI / 'validation.jsonl'}", "data.holdout=800", "data.test=holdout"]
    train, held = load_split(load_config(None, ov), "train"), load_split(load_config(None, ov), "test")
    assert len(train.examples) == 9842 - 800 and len(held.examples) == 800
    assert not {e["id"] for e in train.examples} & {e["id"] for e in held.examples}
    assert held.source == f"holdout:800:{SNLI / 'validation.jsonl'}"
    # A training subset is drawn from what is left, never from the held-out slice.
    small = load_split(load_config(None, ov + ["data.max_train_examples=500"]), "train")
    assert {e["id"] for e in small.examples} <= {e["id"] for e in train.examples}
    assert [e["id"] for e in load_split(load_config(None, ov), "test").examples] == [e["id"] for e in held.examples]


def test_holdout_larger_than_the_data_is_refused():
    cfg = load_config(None, ["data.synthetic_train_size=50", "data.holdout=50", "data.test=holdout"])
    with pytest.raises(DataError, match=r"data\.holdout: 50 would leave nothing to train on"):
        load_split(cfg, "train")


@needs_snli
def test_snli_test_examples_well_formed_and_stable(snli_test):
    ex = snli_test.examples
    assert Counter(e["label"] for e in ex).keys() == {0, 1, 2}
    assert all(set(e) == {"id", "premise", "hypothesis", "label"} for e in ex)
    assert all(e["premise"].strip() and e["hypothesis"].strip() for e in ex)
    ids = [e["id"] for e in ex]
    assert len(set(ids)) == len(ids)
    # First row of the file (README: original order), label 1 = neutral.
    assert ex[0]["hypothesis"] == "The church has cracks in the ceiling." and ex[0]["label"] == 1
    again = load_source(str(SNLI / "test.jsonl"), "test", 0)
    assert [e["id"] for e in again.examples] == ids and again.ids_hash == snli_test.ids_hash


def test_snli_not_copied_into_repo():
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".venv", ".git", "__pycache__", ".pytest_cache")]
        found += [os.path.join(dirpath, f) for f in filenames if f in ("test.jsonl", "validation.jsonl")]
    assert not found, f"SNLI copies inside the repository: {found}"


# ------------------------------------------------------------------ Stanford original format


def test_stanford_format(tmp_path):
    def row(s1, s2, gold, pid):
        return {
            "annotator_labels": [gold],
            "captionID": pid.split("r")[0],
            "gold_label": gold,
            "pairID": pid,
            "sentence1": s1,
            "sentence1_binary_parse": "( x )",
            "sentence1_parse": "(ROOT x)",
            "sentence2": s2,
            "sentence2_binary_parse": "( y )",
            "sentence2_parse": "(ROOT y)",
        }

    rows = [
        row("A cat sits.", "An animal sits.", "entailment", "111#0r1e"),
        row("A cat sits.", "A cat sits on a mat.", "neutral", "111#0r1n"),
        row("A cat sits.", "The cat runs.", "contradiction", "111#0r1c"),
        row("A cat sits.", "Something sits.", "-", "111#0r1x"),
        row("Kids play.", "Nobody plays.", "contradiction", "222#1r1c"),
        row("Kids play.", "Children play.", "-", "222#1r1x"),
    ]
    path = write_jsonl(tmp_path / "snli_1.0_test.jsonl", rows)
    data = load_source(str(path), "test", 0)
    assert data.dropped == 2
    assert [(e["id"], e["label"]) for e in data.examples] == [
        ("111#0r1e", 0),
        ("111#0r1n", 1),
        ("111#0r1c", 2),
        ("222#1r1c", 2),
    ]
    assert data.examples[1]["premise"] == "A cat sits." and data.examples[1]["hypothesis"] == "A cat sits on a mat."


def test_stanford_unknown_gold_label(tmp_path):
    path = write_jsonl(
        tmp_path / "snli_1.0_dev.jsonl",
        [
            {"sentence1": "a", "sentence2": "b", "gold_label": "entailment", "pairID": "1"},
            {"sentence1": "a", "sentence2": "c", "gold_label": "yes", "pairID": "2"},
        ],
    )
    with pytest.raises(DataError, match=r"row 2: gold_label 'yes' is not one of"):
        load_source(str(path), "test", 0)


# ------------------------------------------------------------------ HF convention, other formats


def _expected_hf():
    return [(r["premise"], r["hypothesis"], r["label"]) for r in HF_ROWS if r["label"] != -1]


def _got(data: NLIData):
    return [(e["premise"], e["hypothesis"], e["label"]) for e in data.examples]


def test_hf_jsonl(tmp_path):
    data = load_source(str(write_jsonl(tmp_path / "mine.jsonl", HF_ROWS)), "test", 0)
    assert _got(data) == _expected_hf() and data.dropped == 1
    # ids name the file and the row (dropped rows keep their numbers), so they survive re-runs.
    assert [e["id"] for e in data.examples] == ["mine-000000", "mine-000001", "mine-000002", "mine-000004"]


def test_hf_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "mine.csv"
    pd.DataFrame(HF_ROWS).to_csv(path, index=False)
    data = load_source(str(path), "test", 0)
    assert _got(data) == _expected_hf() and data.dropped == 1


def test_hf_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "mine.parquet"
    datasets.Dataset.from_list(HF_ROWS).to_parquet(str(path))
    data = load_source(str(path), "train", 0)
    assert _got(data) == _expected_hf() and data.dropped == 1


def test_hf_json_lines_with_json_suffix(tmp_path):
    data = load_source(str(write_jsonl(tmp_path / "mine.json", HF_ROWS)), "test", 0)
    assert _got(data) == _expected_hf()


# ------------------------------------------------------------------ bad data inputs


def _error(source: str) -> str:
    with pytest.raises(DataError) as ei:
        load_source(source, "test", 0)
    return str(ei.value)


def test_missing_file(tmp_path):
    msg = _error(str(tmp_path / "absent.jsonl"))
    assert "absent.jsonl: no such file" in msg and "data.train / data.test" in msg and "../shared/snli" in msg


def test_file_without_expected_columns(tmp_path):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"text": "a", "label": 0}])
    msg = _error(str(path))
    assert "columns ['label', 'text'] lack premise/hypothesis/label" in msg
    assert "sentence1/sentence2/gold_label" in msg


def test_string_label_in_hf_format(tmp_path):
    path = write_jsonl(tmp_path / "strlab.jsonl", [{"premise": "a", "hypothesis": "b", "label": "entailment"}])
    msg = _error(str(path))
    assert "row 1: label 'entailment' must be an integer 0, 1, 2" in msg
    assert "sentence1/sentence2/gold_label" in msg


def test_out_of_range_label(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": 0}, {"premise": "a", "hypothesis": "c", "label": 5}]
    msg = _error(str(write_jsonl(tmp_path / "range.jsonl", rows)))
    assert "row 2: label 5 is out of range" in msg and "0 entailment" in msg


def test_empty_premise(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": 0}, {"premise": "  ", "hypothesis": "c", "label": 1}]
    assert "row 2: empty or missing premise" in _error(str(write_jsonl(tmp_path / "prem.jsonl", rows)))


def test_empty_hypothesis(tmp_path):
    rows = [{"premise": "a", "hypothesis": "", "label": 0}]
    assert "row 1: empty or missing hypothesis" in _error(str(write_jsonl(tmp_path / "hyp.jsonl", rows)))


def test_line_not_json(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(HF_ROWS[0]) + "\n{premise: oops\n")
    msg = _error(str(path))
    assert "line 2 is not valid JSON" in msg and "one JSON object" in msg


def test_line_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(HF_ROWS[0]) + "\n[1, 2]\n")
    assert "line 2 is a JSON list, not an object" in _error(str(path))


def test_line_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        (json.dumps(HF_ROWS[0]) + "\n").encode()
        + '{"premise": "café", "hypothesis": "x", "label": 0}\n'.encode("latin-1")
    )
    msg = _error(str(path))
    assert "line 2 is not UTF-8 text" in msg and "re-encode" in msg


def test_unknown_suffix(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("premise\thypothesis\tlabel\na\tb\t0\n")
    msg = _error(str(path))
    assert "unknown file type '.tsv'" in msg and ".jsonl" in msg and ".parquet" in msg


def test_every_row_unlabelled(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": -1}] * 3
    assert "no example with a gold label" in _error(str(write_jsonl(tmp_path / "nolabel.jsonl", rows)))


def test_bad_hub_source():
    with pytest.raises(DataError, match=r"must read hub:<dataset id>:<split>"):
        load_source("hub:stanfordnlp/snli", "test", 0)


# ------------------------------------------------------------------ subset / load_split


def _numbered(n: int) -> NLIData:
    return NLIData(
        [{"id": f"x-{i:04d}", "premise": "p", "hypothesis": f"h{i}", "label": i % 3} for i in range(n)], "numbered", 7
    )


def test_subset_seeded_ordered_and_deterministic():
    data = _numbered(200)
    a, b = subset(data, 30, 5), subset(data, 30, 5)
    ids = [e["id"] for e in a.examples]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert ids == [e["id"] for e in b.examples]
    assert ids == sorted(ids)  # source order kept
    assert set(ids) <= {e["id"] for e in data.examples}
    assert [e["id"] for e in subset(data, 30, 6).examples] != ids  # the seed matters
    assert a.dropped == 7 and a.source == "numbered"


def test_subset_is_not_just_a_prefix():
    ids = [e["id"] for e in subset(_numbered(200), 30, 0).examples]
    assert ids != [f"x-{i:04d}" for i in range(30)]


@pytest.mark.parametrize("max_examples", [0, -1, 200, 500])
def test_subset_keeps_all(max_examples):
    data = _numbered(200)
    assert subset(data, max_examples, 0).examples == data.examples


def test_load_split_applies_max_test_examples(tmp_path):
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(50)]
    path = write_jsonl(tmp_path / "fifty.jsonl", rows)
    cfg = load_config(None, [f"data.test={path}", "data.max_test_examples=12", "data.max_train_examples=5"])
    test = load_split(cfg, "test")
    assert len(test.examples) == 12
    nums = [int(e["premise"][1:]) for e in test.examples]
    assert nums == sorted(nums) and len(set(nums)) == 12
    assert [e["id"] for e in load_split(cfg, "test").examples] == [e["id"] for e in test.examples]
    full = load_split(load_config(None, [f"data.test={path}"]), "test")
    assert len(full.examples) == 50
    train = load_split(cfg, "train")  # synthetic, max_train_examples=5
    assert len(train.examples) == 5 and all(e["id"].startswith("synthetic-train-") for e in train.examples)


def test_load_split_synthetic_sizes():
    cfg = load_config(None, ["data.synthetic_train_size=30", "data.synthetic_test_size=12"])
    assert len(load_split(cfg, "train").examples) == 30
    assert len(load_split(cfg, "test").examples) == 12


# ------------------------------------------------------------------ synthetic


def _pairs(rows):
    return {(r["premise"], r["hypothesis"]) for r in rows}


def test_synthetic_deterministic():
    assert synthetic.generate("train", 120) == synthetic.generate("train", 120)
    assert synthetic.generate("test", 60) == synthetic.generate("test", 60)
    assert synthetic.generate("train", 60) != synthetic.generate("test", 60)


@pytest.mark.parametrize("split", ["train", "test"])
def test_synthetic_balanced_labels(split):
    big = synthetic.generate(split, synthetic.MAX_TRAIN_SIZE)
    # A smaller set is the start of a bigger one, so checking every prefix checks every size.
    for n in (1, 2, 24, 32, 240, 480):
        assert synthetic.generate(split, n) == big[:n], (split, n)
    counts = [0, 0, 0]
    for n, row in enumerate(big, 1):
        counts[row["label"]] += 1
        assert max(counts) - min(counts) <= 1, (split, n, counts)


def test_synthetic_train_test_disjoint_and_ids_unique():
    train = synthetic.generate("train", synthetic.MAX_TRAIN_SIZE)
    test = synthetic.generate("test", 1000)
    assert not _pairs(train) & _pairs(test)
    for rows in (train, test):
        ids = [r["id"] for r in rows]
        assert len(set(ids)) == len(ids)
        assert len(_pairs(rows)) == len(rows)  # no duplicate pair within a split either
        assert {r["label"] for r in rows} == {0, 1, 2}
        assert all(r["premise"] and r["hypothesis"] for r in rows)


def test_synthetic_train_size_limit():
    with pytest.raises(ValueError, match="synthetic_train_size"):
        synthetic.generate("train", synthetic.MAX_TRAIN_SIZE + 1)


def test_synthetic_source_via_load_source():
    data = load_source("synthetic", "test", 24)
    assert len(data.examples) == 24 and data.dropped == 0 and data.source == "synthetic:test"
    assert data.examples == synthetic.generate("test", 24)
