"""Cutting length-sorted rows into batches: a fixed number of pairs, or as many pairs as a token budget holds.

A batch's cost in tokens is what it computes on and holds in memory: its rows times the padded width.
A row may have several parts padded separately (a shared prefix and the rest of the prompt), so the
width is the sum of each part's longest. With `ways` > 1 a batch is split over that many processes
(process r takes rows r, r + ways, ...), and each process's share must fit the budget on its own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchRule:
    """`rows` pairs per batch, or (`tokens` set) as many pairs as `tokens` padded tokens hold."""

    rows: int | None = None
    tokens: int | None = None
    ways: int = 1

    def __post_init__(self):
        if (self.rows is None) == (self.tokens is None):
            raise ValueError("a BatchRule has rows or tokens, not both")

    @classmethod
    def of(cls, section, ways: int = 1) -> BatchRule:
        """The rule of a config section with batch_size and batch_tokens (a number by now: auto is resolved
        by the plan); batch_size counts pairs per process, so the rows of a global batch are batch_size x ways."""
        if section.batch_tokens is None:
            return cls(rows=section.batch_size * ways, ways=ways)
        if not isinstance(section.batch_tokens, int):
            raise ValueError(f"batch_tokens {section.batch_tokens!r} was not resolved to a number of tokens")
        return cls(tokens=section.batch_tokens, ways=ways)

    def times(self, k: int) -> BatchRule:
        """k batches' worth as one group (the premise groups whose caches are held at once)."""
        if self.tokens is None:
            assert self.rows is not None  # one of the two, by __post_init__
            return BatchRule(rows=self.rows * k, ways=self.ways)
        return BatchRule(tokens=self.tokens * k, ways=self.ways)

    def describe(self) -> str:
        return f"{self.rows} pairs" if self.tokens is None else f"<= {self.tokens} tokens"

    def cut(self, order: list[int], widths) -> list[list[int]]:
        """Consecutive batches of `order` (best sorted by width). widths[i] is row i's length, or a tuple of
        its parts' lengths. Fixed rows: every `rows` rows. Tokens: a row joins the batch while
        ceil(rows / ways) x padded width stays within the budget; a row wider than the budget alone is an error."""
        if self.tokens is None:
            assert self.rows is not None  # one of the two, by __post_init__
            return [order[i : i + self.rows] for i in range(0, len(order), self.rows)]
        batches: list[list[int]] = []
        current: list[int] = []
        longest: tuple[int, ...] | None = None
        for i in order:
            parts = widths[i] if isinstance(widths[i], tuple) else (widths[i],)
            if sum(parts) > self.tokens:
                raise ValueError(f"a row of {sum(parts)} tokens does not fit a batch of {self.tokens}")
            grown = parts if longest is None else tuple(map(max, longest, parts))
            if current and math.ceil((len(current) + 1) / self.ways) * sum(grown) > self.tokens:
                batches.append(current)
                current, grown = [], parts
            current.append(i)
            longest = grown
        if current:
            batches.append(current)
        return batches


def batch_tokens(rows: list[int], widths, ways: int = 1) -> int:
    """The padded tokens one process's share of a batch holds (the quantity a budget bounds)."""
    parts = [widths[i] if isinstance(widths[i], tuple) else (widths[i],) for i in rows]
    return math.ceil(len(rows) / ways) * sum(map(max, zip(*parts)))


def budget_for_rows(rows: int, cut, longest: int) -> int:
    """The smallest token budget whose batches hold at least `rows` pairs on average; cut(budget) returns the
    batches of a budget. To compare batches by tokens with batches of `rows` pairs at the same pairs per step."""
    lo, hi = longest, rows * longest
    while lo < hi:
        mid = (lo + hi) // 2
        batches = cut(mid)
        lo, hi = (mid + 1, hi) if sum(map(len, batches)) / len(batches) < rows else (lo, mid)
    return lo


def epoch_batches(lengths: list[int], rule: BatchRule, seed: int, epoch: int, by_length: bool) -> list[list[int]]:
    """The batch order of one epoch: a function of (seed, epoch) alone, so a resumed run can skip ahead.

    by_length: shuffle, sort each window of about 16 batches by prompt length, cut it into batches, then
    shuffle the batches, so that rows of a batch have similar lengths (little padding to compute on).
    """
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not by_length:
        return rule.cut(order, lengths)
    if rule.rows:
        rows = rule.rows
    else:
        assert rule.tokens is not None  # one of the two, by __post_init__
        rows = max(1, rule.tokens * rule.ways // max(1, round(sum(lengths) / max(1, len(lengths)))))
    window = 16 * rows
    batches = [
        b
        for w in range(0, len(order), window)
        for b in rule.cut(sorted(order[w : w + window], key=lengths.__getitem__), lengths)
    ]
    rng.shuffle(batches)
    return batches


def global_batches(lengths: list[int], rule: BatchRule, seed: int, epoch: int, by_length: bool) -> list[list[int]]:
    """One epoch's global batches; process r of `rule.ways` trains on `batch[r::rule.ways]`.

    The order depends on the global batch alone (batch_size x processes pairs, or the token budget of
    each process), so 2 processes of batch b see exactly the pairs that 1 process of batch 2b sees, step
    by step. A last batch too small to give every process a pair is dropped (a process with nothing would
    stall the others).
    """
    return [b for b in epoch_batches(lengths, rule, seed, epoch, by_length) if len(b) >= rule.ways]
