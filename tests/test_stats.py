"""hpcnli.report.stats against formulas worked out independently here (standard library only)."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from hpcnli.report.stats import accuracy_ci, confusion, paired_difference, per_class

Z = NormalDist().inv_cdf(0.975)  # 1.959963984540054


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    denom = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / denom
    half = Z / denom * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(130, 240), (1, 10), (9, 10), (4912, 4912 + 88), (50, 100)])
def test_accuracy_ci_is_wilson(k, n):
    lo, hi = accuracy_ci(k, n)
    elo, ehi = wilson(k, n)
    assert lo == pytest.approx(elo, abs=1e-12) and hi == pytest.approx(ehi, abs=1e-12)
    assert lo < k / n < hi


def test_accuracy_ci_130_of_240_by_number():
    lo, hi = accuracy_ci(130, 240)
    assert (round(lo, 4), round(hi, 4)) == (0.4785, 0.6036)  # 0.47847, 0.60355


def test_accuracy_ci_extremes():
    lo, hi = accuracy_ci(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(Z * Z / (10 + Z * Z))
    lo, hi = accuracy_ci(10, 10)
    assert lo == pytest.approx(10 / (10 + Z * Z)) and hi == pytest.approx(1.0)


def _pairs(both_right: int, fixed: int, broken: int, both_wrong: int) -> tuple[list[bool], list[bool]]:
    base = [True] * both_right + [False] * fixed + [True] * broken + [False] * both_wrong
    tuned = [True] * both_right + [True] * fixed + [False] * broken + [False] * both_wrong
    return base, tuned


def test_mcnemar_exact_hand_checked():
    base, tuned = _pairs(20, 10, 2, 8)
    r = paired_difference(base, tuned)
    assert (r["fixed"], r["broken"]) == (10, 2)
    # two-sided exact binomial: 2 * P(X <= 2), X ~ Bin(12, 1/2)
    expected = 2 * sum(math.comb(12, k) for k in range(3)) / 2**12
    assert expected == pytest.approx(0.0385742, abs=1e-7)
    assert r["mcnemar_exact_p"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_symmetric_and_no_discordant_pairs():
    b1, t1 = _pairs(20, 10, 2, 8)
    b2, t2 = _pairs(20, 2, 10, 8)
    r1, r2 = paired_difference(b1, t1), paired_difference(b2, t2)
    assert r1["mcnemar_exact_p"] == pytest.approx(r2["mcnemar_exact_p"])
    assert r2["difference"] == pytest.approx(-r1["difference"])
    same = paired_difference([True, False, True], [True, False, True])
    assert same["mcnemar_exact_p"] == 1.0 and same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
    # Balanced discordance: p is 1 (capped), not above it.
    assert paired_difference(*_pairs(0, 3, 3, 0))["mcnemar_exact_p"] == pytest.approx(1.0)


def test_paired_difference_ci():
    base, tuned = _pairs(20, 10, 2, 8)
    n, b, c = 40, 10, 2
    r = paired_difference(base, tuned)
    diff = (b - c) / n
    assert r["difference"] == pytest.approx(0.2)
    # accuracy difference equals tuned accuracy minus base accuracy
    assert r["difference"] == pytest.approx(sum(tuned) / n - sum(base) / n)
    se = math.sqrt(b + c - (b - c) ** 2 / n) / n
    assert se == pytest.approx(math.sqrt(10.4) / 40)
    lo, hi = r["ci95"]
    assert lo == pytest.approx(diff - Z * se) and hi == pytest.approx(diff + Z * se)
    assert (round(lo, 4), round(hi, 4)) == (0.0420, 0.3580)


def test_paired_difference_ci_from_unpaired_order():
    # Same counts, interleaved: the result depends on pairs, not on positions.
    base, tuned = _pairs(20, 10, 2, 8)
    order = sorted(range(40), key=lambda i: (i * 17) % 40)
    r1 = paired_difference(base, tuned)
    r2 = paired_difference([base[i] for i in order], [tuned[i] for i in order])
    assert r1 == r2


GOLD = [0, 0, 1, 1, 2, 2]
PRED = [0, 1, 1, 1, 0, 2]


def test_per_class_hand_checked():
    r = per_class(GOLD, PRED, ("entailment", "neutral", "contradiction"))
    assert list(r) == ["entailment", "neutral", "contradiction"]
    e, n, c = r["entailment"], r["neutral"], r["contradiction"]
    assert (e["precision"], e["recall"], e["f1"], e["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (n["precision"], n["recall"], n["f1"], n["support"]) == pytest.approx((2 / 3, 1.0, 0.8, 2))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((1.0, 0.5, 2 / 3, 2))
    assert isinstance(e["support"], int) and isinstance(e["f1"], float)


def test_per_class_absent_class_is_zero_not_error():
    r = per_class([0, 0, 1], [0, 0, 1], ("entailment", "neutral", "contradiction"))
    assert r["contradiction"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["entailment"]["f1"] == 1.0


def test_confusion_rows_are_gold():
    m = confusion(GOLD, PRED)
    assert m == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert sum(map(sum, m)) == len(GOLD)
    # gold 2 predicted 0 is row 2, column 0 (not the transpose)
    assert m[2][0] == 1 and m[0][2] == 0


def test_confusion_keeps_all_labels():
    assert confusion([0, 0], [0, 0]) == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert confusion([1], [0], n_labels=2) == [[0, 0], [1, 0]]
