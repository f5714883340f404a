"""Nothing complete is wrong (issue 24, the families done so far): the reducer counts only evidence that is tied
together, non-finite numbers stop a run, a refused command changes no file, nothing given is ignored."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from conftest import ROOT, copy_run, run_main
from hpcnli.config import load_config
from hpcnli.data.nli import visible
from hpcnli.records import ShardMetrics
from hpcnli.run.paths import RunPaths
from hpcnli.run.state import remaining_work
from test_trust import one_line_error

SMOKE = ROOT / "jobs" / "smoke.yaml"
DEFAULT = ROOT / "jobs" / "default.yaml"


def plan_only(run_dir, *overrides: str, check: bool = False, config=SMOKE):
    return run_main("hpcnli.submit", "--config", config, "--plan-only", "--run-dir", run_dir, *overrides, check=check)


def reduce_problems(p: RunPaths) -> str:
    proc = run_main("hpcnli.reduce", p.run_dir, check=False)
    assert proc.returncode == 1 and not json.loads(p.report_json.read_text())["complete"], proc.stderr
    return proc.stderr


def test_swapped_predictions_are_refused(smoke_run, tmp_path):
    """Swapping base and fine-tuned predictions files flipped the difference's sign in a complete report."""
    p = copy_run(smoke_run, tmp_path / "swap")
    base, tuned = p.shard_predictions("base", 0), p.shard_predictions("finetuned", 0)
    held = base.read_bytes()
    base.write_bytes(tuned.read_bytes())
    tuned.write_bytes(held)
    err = reduce_problems(p)
    assert "base shard 0 (12 examples): shard_0000.jsonl is not the file its metrics describe" in err
    assert "finetuned shard 0 (12 examples): shard_0000.jsonl is not the file its metrics describe" in err


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda r: {**r, "gold": (r["gold"] + 1) % 3}, "but the test set's label is"),
        (lambda r: {**r, "pred": (r["pred"] + 1) % 3}, "is not the argmax of its scores"),
        (lambda r: {**r, "scores": [float("nan"), 0.0, 0.0]}, "are not all finite numbers"),
    ],
    ids=["gold", "pred", "nan"],
)
def test_an_edited_row_is_refused_even_with_a_matching_hash(smoke_run, tmp_path, edit, message):
    """A hand-edited shard whose metrics were edited to match (the hash check passes) is still refused."""
    p = copy_run(smoke_run, tmp_path / "edit")
    pred_file, metrics_file = p.shard_predictions("base", 1), p.shard_metrics("base", 1)
    rows = [json.loads(line) for line in pred_file.read_text().splitlines()]
    rows[0] = edit(rows[0])
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = json.loads(metrics_file.read_text())
    metrics.pop("predictions_sha256")  # as a version-2 shard, which recorded none
    metrics["schema_version"] = 2
    later = {f.name for f in dataclasses.fields(ShardMetrics) if f.metadata.get("since", 0) > 2}
    metrics = {k: v for k, v in metrics.items() if k not in later}
    metrics_file.write_text(json.dumps(metrics))
    assert message in reduce_problems(p)


def test_empty_train_metrics_is_not_an_older_run(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "empty")
    p.train_metrics.write_text("{}")
    assert "not a train_metrics.json of version 1 (missing adapter_bytes" in reduce_problems(p)
    work = remaining_work(load_config(p.config), p)
    assert work.finetune and "train_metrics.json is unreadable" in work.why[0]


def test_deleted_adapter_is_no_complete_report(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "no-adapter")
    shutil.rmtree(p.adapter)
    assert "fine-tune: no complete adapter and train_metrics.json" in reduce_problems(p)


def test_truncated_eval_weights_are_written_again(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "weights")
    run_main("hpcnli.evaluate", p.run_dir, "--model", "base", "--shard", "0")
    weights = p.eval_weights("base") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    run_main("hpcnli.evaluate", p.run_dir, "--model", "base", "--shard", "1")
    assert json.loads(p.shard_metrics("base", 1).read_text())["weights_from"] == "written"
    run_main("hpcnli.reduce", p.run_dir)


@pytest.mark.model
@pytest.mark.parametrize(
    "override",
    ["train.learning_rate=.inf", "train.learning_rate=1e400", "train.weight_decay=.inf", "train.warmup_ratio=.nan"],
)
def test_no_float_key_accepts_a_non_finite_value(tmp_path, override):
    proc = plan_only(tmp_path / "r", override)
    one_line_error(proc, 2, f"{override.split('=')[0]}: expected a finite number")
    assert not (tmp_path / "r").exists()


@pytest.mark.model
def test_a_diverged_fine_tune_stops_with_one_line(tmp_path):
    proc = run_main(
        "hpcnli.submit",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "r",
        "train.learning_rate=1e30",  # the tiny model's normalized layers absorb far more than the 135M's
        "train.max_steps=6",
        "eval.num_shards=1",
        check=False,
    )
    assert proc.returncode == 1
    log = (tmp_path / "r" / "logs" / "finetune.log").read_text()
    assert "the fine-tune diverged (train.learning_rate 1e+30); lower train.learning_rate" in log, log[-2000:]
    assert "Traceback" not in log and "INCOMPLETE" in RunPaths(tmp_path / "r").report_md.read_text()


def test_a_refused_force_deletes_nothing(smoke_run, tmp_path):
    """--resume --force on a run in use is refused, and the complete run stays complete."""
    import fcntl

    p = copy_run(smoke_run, tmp_path / "busy")
    before = p.train_metrics.read_bytes()
    with open(p.lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run_main("hpcnli.submit", "--resume", p.run_dir, "--force", check=False)
    one_line_error(proc, 2, "is in use by another hpcnli.submit")
    assert p.train_metrics.read_bytes() == before


@pytest.mark.parametrize("extra", [["--config", "jobs/nothing.yaml"], ["--name", "x"], ["--run-dir", "/tmp/x"]])
def test_resume_ignores_nothing_given(smoke_run, tmp_path, extra):
    proc = run_main("hpcnli.submit", "--resume", smoke_run.run_dir, *extra, check=False)
    assert proc.returncode == 2 and f"{extra[0]} cannot go with it" in proc.stderr, proc.stderr


@pytest.mark.model
@pytest.mark.parametrize(
    "root,message", [("", "output_root: empty"), ("  ", "output_root: empty"), ("~/x", "'~' is not expanded here")]
)
def test_output_root_is_checked(tmp_path, root, message):
    proc = run_main("hpcnli.submit", "--config", SMOKE, "--plan-only", f"output_root={root}", check=False, cwd=tmp_path)
    one_line_error(proc, 2, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.model
def test_the_output_layer_is_no_lora_target_with_the_labels_loss(tmp_path):
    proc = plan_only(tmp_path / "r", "lora.target_modules=[lm_head, q_proj]")
    one_line_error(proc, 2, "lora.target_modules: lm_head is the output layer")


@pytest.mark.parametrize("text", ["\u200b", "\u2060\ufeff", "\x00", " \u00a0\t", ""])
def test_invisible_text_is_empty(text):
    assert not visible(text) and visible("a" + text)


def test_status_says_what_is_valid_not_what_exists(smoke_run, tmp_path):
    import fcntl

    p = copy_run(smoke_run, tmp_path / "stale")
    assert (
        "finetune   valid\nbase       valid\nfinetuned  valid\nreport     complete and current"
        in run_main("hpcnli.status", p.run_dir).stdout
    )
    p.config.write_text(p.config.read_text().replace("learning_rate: 0.0005", "learning_rate: 0.001"))
    out = run_main("hpcnli.status", p.run_dir).stdout
    assert "finetune   to do" in out and "finetuned  0/2 valid (to do: [0, 1])" in out, out
    assert "report     stale: outputs changed since it was written" in out, out
    with open(p.lock, "a+") as held:  # a local run in progress holds the run's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert "a submit is working on it now" in run_main("hpcnli.status", p.run_dir).stdout


def _pairs_file(path, rows) -> str:
    path.write_text("".join(json.dumps({"premise": p, "hypothesis": h, "label": y}) + "\n" for p, h, y in rows))
    return str(path)


@pytest.mark.model
def test_train_test_overlap_is_measured_by_content(tmp_path):
    rows = [(f"A man rides horse number {i}.", f"Someone rides {i}.", i % 3) for i in range(40)]
    train = _pairs_file(tmp_path / "train.jsonl", rows)
    same = _pairs_file(tmp_path / "copy.jsonl", [(p.upper(), "  " + h, y) for p, h, y in rows[:12]])  # another path
    proc = plan_only(tmp_path / "r", f"data.train={train}", f"data.test={same}")
    one_line_error(proc, 2, "data.test: all 12 of its pairs are also training pairs")
    assert not (tmp_path / "r").exists()
    part = _pairs_file(
        tmp_path / "part.jsonl",
        rows[:3] + [(f"A dog barks {i}.", "A dog is loud.", 0) for i in range(9)],
    )
    plan_only(tmp_path / "p", f"data.train={train}", f"data.test={part}", check=True)
    assert json.loads(RunPaths(tmp_path / "p").test_manifest.read_text())["train_overlap"] == 3


@pytest.mark.model
def test_input_is_bounded(tmp_path):
    """A YAML alias bomb is refused at once; a huge train.max_steps plans in seconds (a bound, not every batch)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n'
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nname: *c\n"
    )
    proc = plan_only(tmp_path / "b", config=bomb)
    one_line_error(proc, 2, "line 2: alias *a: configs take no YAML aliases")
    plan_only(tmp_path / "r", "train.max_steps=1000000000000", check=True)


@pytest.mark.parametrize(
    "name,content,command,message",
    [
        ("test_set.json", "[]", "hpcnli.reduce", "test_set.json: expected a JSON object (test_set.json)"),
        ("memory_plan.json", "[]", "hpcnli.evaluate", "is not a memory plan"),
        ("plan.json", '{"submissions": 5}', "hpcnli.status", "is not a submissions ledger"),
    ],
)
def test_a_file_of_the_wrong_shape_is_one_line(smoke_run, tmp_path, name, content, command, message):
    p = copy_run(smoke_run, tmp_path / "shape")
    (p.run_dir / name).write_text(content)
    args = ["--model", "base", "--shard", "0"] if command == "hpcnli.evaluate" else []
    one_line_error(run_main(command, p.run_dir, *args, check=False), 2, message)


def test_a_shard_metrics_file_of_the_wrong_shape_is_a_named_problem(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "shard-shape")
    p.shard_metrics("base", 0).write_text("[]")
    assert "base shard 0 (12 examples): unreadable (RecordError" in reduce_problems(p)


def test_a_bad_old_run_does_not_break_planning(smoke_run, tmp_path):
    """The time plan reads every run in output_root; one with a broken train_metrics.json is passed over."""
    root = tmp_path / "root"
    root.mkdir()
    p = copy_run(smoke_run, root / "old")
    p.train_metrics.write_text('{"tokens_per_s": "fast"}')
    run_main("hpcnli.submit", "--config", SMOKE, "--plan-only", "--name", "new", f"output_root={root}")


@pytest.mark.model
def test_refused_plan_only_leaves_nothing_beside_the_run(tmp_path):
    plan_only(tmp_path / "r", check=True)
    one_line_error(
        plan_only(tmp_path / "s", "eval.num_shards=99"), 2, "eval.num_shards: 99 shards for 24 test examples"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # neither a lock file beside r nor the refused s


@pytest.mark.model
def test_cpu_processes_share_the_node_memory(tmp_path):
    """Planned for the 135M model (on the meta device): the tiny one's batches reach the token cap in either case."""
    auto = ["train.batch_tokens=auto", "resources.cpus_per_task=1", "resources.mem_gb=8"]
    one = plan_only(tmp_path / "one", *auto, check=True, config=DEFAULT).stdout
    two = plan_only(tmp_path / "two", *auto, "resources.processes_per_node=2", check=True, config=DEFAULT).stdout
    assert "the fine-tune's processes share the node" in two and "share the node" not in one
    tokens = [
        json.loads(RunPaths(tmp_path / r).memory_plan.read_text())["stages"]["finetune"]["tokens_per_batch"]
        for r in ("one", "two")
    ]
    assert tokens[1] < tokens[0]  # each of two processes has half the node's memory


@pytest.mark.model
def test_a_full_disk_while_checkpointing_is_one_line(tmp_path):
    """torch and safetensors report a full disk in their own words; directory_aside names it, leaves nothing."""
    import os
    import subprocess

    import torch

    from hpcnli.errors import run_command
    from hpcnli.io import directory_aside

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(tiny)]).returncode:
        pytest.skip("needs root to mount a 2 MB tmpfs")
    try:

        def checkpoint():
            with directory_aside(tiny / "step_0000001") as staging:
                torch.save(torch.zeros(1_000_000), staging / "trainer.pt")

        assert run_command("hpcnli.finetune", checkpoint) == 2
        assert list(tiny.iterdir()) == []  # no staging directory left to fill the disk
    finally:
        subprocess.run(["umount", str(tiny)])


def _data_error(tmp_path, path, split="test") -> str:
    proc = plan_only(tmp_path / "r", f"data.{split}={path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_weak_messages_are_exact(tmp_path):
    rows = [{"premise": f"P {i}.", "hypothesis": f"H {i}.", "label": i % 3} for i in range(9)]
    rows[6]["label"] = "contradiction"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "row 7: label 'contradiction' must be an integer 0, 1, 2" in _data_error(tmp_path, mixed)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty.jsonl: an empty file; it holds no pairs" in _data_error(tmp_path, empty)
    header = tmp_path / "header.csv"
    header.write_text("premise,hypothesis,label\n")
    assert "header.csv: holds no pairs (a header only, or blank lines)" in _data_error(tmp_path, header)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert "folder.jsonl: a directory; name a data file in it" in _data_error(tmp_path, folder)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    assert "pipe.jsonl: not a regular file (a FIFO, socket or device)" in _data_error(tmp_path, fifo)
    invisible = tmp_path / "invisible.jsonl"
    invisible.write_text(json.dumps({"premise": "\u200b\u2060\ufeff", "hypothesis": "H.", "label": 0}) + "\n")
    assert "invisible.jsonl: row 1: empty or missing premise (no visible character)" in _data_error(tmp_path, invisible)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    assert "loop.jsonl: a loop of symbolic links" in _data_error(tmp_path, loop)


@pytest.mark.model
@pytest.mark.parametrize(
    "override,message",
    [
        ("train.le\u0430rning_rate=1e-4", "unknown key (it holds '\u0430' U+0430 CYRILLIC SMALL LETTER A, not ASCII"),
        ("data.synthetic_test_size=0", "data.synthetic_test_size: 0 pairs for data.test synthetic"),
        ("data.synthetic_train_size=0", "data.synthetic_train_size: 0 pairs for data.train synthetic"),
    ],
)
def test_config_messages_name_the_key(tmp_path, override, message):
    one_line_error(plan_only(tmp_path / "r", override), 2, message)


def test_a_read_error_does_not_say_write(capsys):
    import errno

    from hpcnli.errors import run_command

    def unreadable():
        raise PermissionError(errno.EACCES, "Permission denied", "/data/test.jsonl")

    assert run_command("hpcnli.reduce", unreadable) == 2
    assert "cannot read or write (/data/test.jsonl): permission denied" in capsys.readouterr().err


def test_an_underflowed_p_value_is_a_bound():
    from hpcnli.report.markdown import p_value
    from hpcnli.report.stats import paired_difference

    base = [False] * 2678 + [True] * 285 + [True] * 1949
    tuned = [True] * 2678 + [False] * 285 + [True] * 1949
    assert p_value(paired_difference(base, tuned)) == "p = 1.7e-486"  # the showcase's counts: p underflows a double
    assert p_value({"mcnemar_exact_p": 0.0}) == "p < 1e-307"  # a report from before the logarithm was kept
