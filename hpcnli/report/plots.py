"""The report's PNG plots, each drawn from report.json alone and saved next to report.md."""

from __future__ import annotations

from datetime import datetime

from hpcnli.data.nli import LABELS
from hpcnli.records import Report
from hpcnli.run.paths import MODELS, RunPaths


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(plt, rep: Report, path) -> str:
    models = rep.models
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    acc = [models[m]["accuracy"] for m in MODELS]
    err = [
        [a - models[m]["accuracy_ci95"][0] for a, m in zip(acc, MODELS)],
        [models[m]["accuracy_ci95"][1] - a for a, m in zip(acc, MODELS)],
    ]
    ax.bar(MODELS, acc, yerr=err, capsize=6, color=["#999999", "#3b7dd8"])
    ax.axhline(1 / 3, ls="--", c="k", lw=0.8, label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(loc="upper left")
    _save(fig, path)
    return "Accuracy with 95% confidence intervals"


def plot_confusion(plt, rep: Report, path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, m in zip(axes, MODELS):
        cm = rep.models[m]["confusion"]
        ax.imshow(cm, cmap="Blues")
        for i in range(3):
            for j in range(3):
                dark = cm[i][j] > 0.5 * max(max(row) for row in cm)
                ax.text(j, i, cm[i][j], ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(3), [w[:7] for w in LABELS])
        ax.set_yticks(range(3), [w[:7] for w in LABELS])
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(m)
    _save(fig, path)
    return "Confusion matrices (rows gold, columns predicted)"


def plot_loss(plt, rep: Report, path) -> str | None:
    """The training loss; with held-out evaluation (train.eval_every) its loss on the same step axis, and the
    held-out accuracy with its 95% interval below, the best step marked."""
    train = rep.training
    curve = train.loss_curve if train else []
    held = (train.heldout_curve or []) if train else []
    if not curve and not held:
        return None
    if not held:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["step"] for r in curve], [r["loss"] for r in curve], marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        _save(fig, path)
        return "Training loss"
    steps = [p["step"] for p in held]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.4), sharex=True)
    top.plot([r["step"] for r in curve], [r["loss"] for r in curve], marker=".", label="training (mean of the steps)")
    top.plot(steps, [p["loss"] for p in held], marker="o", label=f"held-out ({held[0]['pairs']} pairs)")
    top.set_ylabel("loss (nats)")
    top.legend(fontsize=8)
    bottom.plot(steps, [100 * p["accuracy"] for p in held], marker="o", color="C1")
    bottom.fill_between(
        steps, [100 * p["ci_low"] for p in held], [100 * p["ci_high"] for p in held], alpha=0.2, color="C1"
    )
    if train and train.best_step is not None:
        for ax in (top, bottom):
            ax.axvline(train.best_step, color="grey", linestyle="--", linewidth=1)
        bottom.annotate(f"best: step {train.best_step}", (train.best_step, bottom.get_ylim()[0]), fontsize=8)
    bottom.set_ylabel("held-out accuracy (%)")
    bottom.set_xlabel("optimizer step")
    _save(fig, path)
    return "Training and held-out loss, held-out accuracy (95% interval)"


def plot_shards(plt, rep: Report, path) -> str | None:
    shards = [s for m in MODELS for s in rep.shards[m]]
    if not shards:
        return None
    t0 = min(datetime.fromisoformat(s.started_at).timestamp() for s in shards)
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(shards)))
    for k, s in enumerate(shards):
        start = datetime.fromisoformat(s.started_at).timestamp() - t0
        end = datetime.fromisoformat(s.finished_at).timestamp() - t0
        ax.barh(k, end - start, left=start, color="#3b7dd8" if s.model == "finetuned" else "#999999")
    ax.set_yticks(range(len(shards)), [f"{s.model} {s.shard}" for s in shards])
    ax.set_xlabel("seconds since the first shard started")
    _save(fig, path)
    return "Shard timeline"


PLOTS = {"accuracy": plot_accuracy, "confusion": plot_confusion, "loss": plot_loss, "shards": plot_shards}


def write_plots(paths: RunPaths, rep: Report) -> list[tuple[str, str]]:
    """PNG plots next to the report; returns (title, file name) of each plot drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for name, draw in PLOTS.items():
        title = draw(plt, rep, paths.plot(name))
        if title:
            made.append((title, paths.plot(name).name))
    return made
