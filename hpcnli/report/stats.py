"""Statistics for the report, from scipy and scikit-learn; pure functions of the predictions.

scipy and scikit-learn are imported where they are used: together they take about 2 s to import, which every
command that only plans (submit --plan-only, a refused config, a sweep's plan) would otherwise pay."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975), the 97.5th percentile of the standard normal


def accuracy_ci(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    from scipy import stats

    ci = stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(base_correct: list[bool], tuned_correct: list[bool]) -> dict:
    """Accuracy difference (tuned - base) on the same examples, its 95% CI and McNemar's exact test.

    CI: Wald interval for a difference of paired proportions, se = sqrt(b + c - (b - c)^2 / n) / n,
    where b = examples fixed (base wrong, tuned right) and c = examples broken.
    McNemar exact: two-sided binomial test of b successes in b + c trials at p = 0.5.
    """
    from scipy import special, stats

    n = len(base_correct)
    fixed = sum(1 for b, t in zip(base_correct, tuned_correct) if not b and t)
    broken = sum(1 for b, t in zip(base_correct, tuned_correct) if b and not t)
    diff = (fixed - broken) / n
    se = math.sqrt(max(fixed + broken - (fixed - broken) ** 2 / n, 0.0)) / n
    p = float(stats.binomtest(fixed, fixed + broken, 0.5).pvalue) if fixed + broken else 1.0
    # p underflows to 0 beyond about 1e-308 (2,678 fixed against 285 broken): its logarithm does not
    tail = stats.binom.logpmf(range(min(fixed, broken) + 1), fixed + broken, 0.5)  # in log space: no underflow
    log_p = float(special.logsumexp(tail)) + math.log(2) if fixed + broken else 0.0
    return {
        "difference": diff,
        "ci95": [diff - Z95 * se, diff + Z95 * se],
        "fixed": fixed,
        "broken": broken,
        "mcnemar_exact_p": p,
        "mcnemar_log10_p": min(0.0, float(log_p) / math.log(10)),
    }


def per_class(gold: list[int], pred: list[int], labels: tuple[str, ...]) -> dict:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=list(range(len(labels))), zero_division=0)
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(labels)
    }


def confusion(gold: list[int], pred: list[int], n_labels: int = 3) -> list[list[int]]:
    """Rows are gold labels, columns predictions."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(gold, pred, labels=list(range(n_labels))).tolist()


def paired_bootstrap(diff, resamples: int = 2000, seed: int = 0) -> dict:
    """The mean of `diff` (seeds x pairs: +1 where A is right and B wrong, -1 the reverse, 0 else; seed i of A
    against seed i of B) with a 95% percentile interval and a two-sided p from resampling seeds and pairs.

    Each resample draws seeds with replacement and pairs with replacement, the same pairs for every seed, so the
    interval carries both seed noise and the test pairs' sampling noise; p = 2 x the smaller share of resampled
    means on either side of zero (with the +1 that keeps it above 0)."""
    import numpy as np

    diff = np.asarray(diff, dtype=float)
    seeds, pairs = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for lo in range(0, resamples, 250):  # 250 x pairs counts at a time: tens of MB for SNLI's 9,824 pairs
        n = min(250, resamples - lo)
        seed_weights = rng.multinomial(seeds, [1 / seeds] * seeds, size=n) / seeds  # n x seeds
        pair_weights = rng.multinomial(pairs, [1 / pairs] * pairs, size=n) / pairs  # n x pairs
        means[lo : lo + n] = np.einsum("ns,sp,np->n", seed_weights, diff, pair_weights)
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return {
        "difference": float(diff.mean()),
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
        "p": p,
        "resamples": resamples,
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment for multiple comparisons: reject where the adjusted p < alpha keeps the
    family-wise error rate at alpha."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
