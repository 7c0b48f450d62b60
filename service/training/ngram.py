"""Interpolated Kneser-Ney character n-grams: the strong baseline of the language model.

The highest order uses raw counts; every lower order uses continuation counts (how many
distinct characters precede an n-gram). Each order has three absolute discounts, for
n-grams seen once, twice and three or more times, estimated from its count-of-counts
(modified Kneser-Ney, Chen and Goodman 1998, section 3). The unigram level is interpolated
with the uniform distribution over the vocabulary, so every character has a probability.
The order is chosen on a validation split of the training text (``choose_order``), never on
the held-out tail.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from service.training.baselines import Ids

KN_ORDERS = tuple(range(2, 17))
"""Orders (characters, including the one predicted) the n-gram chooses from."""


@dataclass
class _Level:
    """One order: counts of each n-gram; per context its total count and the mass its
    discounts set aside for the lower order."""

    counts: dict[bytes, int]
    context_total: dict[bytes, int]
    context_reserved: dict[bytes, float]
    discounts: tuple[float, float, float]
    """For counts 1, 2 and 3 or more."""

    def discount(self, count: int) -> float:
        return 0.0 if count == 0 else self.discounts[min(count, 3) - 1]


def discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from the counts of one order."""
    freq = Counter(counts)
    n = [freq.get(k, 0) for k in (1, 2, 3, 4)]
    if min(n) == 0:
        return (0.5, 1.0, 1.5)
    y = n[0] / (n[0] + 2 * n[1])
    raw = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
    return (
        min(max(raw[0], 0.05), 1.0),
        min(max(raw[1], 0.05), 2.0),
        min(max(raw[2], 0.05), 3.0),
    )


def _level(counts: dict[bytes, int]) -> _Level:
    d = discounts(counts.values())
    total: Counter[bytes] = Counter()
    reserved: dict[bytes, float] = {}
    for gram, c in counts.items():
        h = gram[:-1]
        total[h] += c
        reserved[h] = reserved.get(h, 0.0) + d[min(c, 3) - 1]
    return _Level(counts, dict(total), reserved, d)


class KneserNey:
    """An interpolated Kneser-Ney model of order ``order`` over ids ``0 .. vocab - 1``."""

    def __init__(self, train: Ids, order: int, vocab: int) -> None:
        if order < 1:
            raise ValueError("order must be at least 1")
        if vocab > 256 or (len(train) and int(train.max()) >= vocab):
            raise ValueError("ids must be below vocab, and vocab at most 256")
        self.order = order
        self.vocab = vocab
        data = train.astype(np.uint8).tobytes()
        raw = Counter(data[i : i + order] for i in range(len(data) - order + 1))
        levels = [_level(dict(raw))]
        upper: dict[bytes, int] = raw
        for _ in range(order - 1):
            continuation: Counter[bytes] = Counter()
            for gram in upper:
                continuation[gram[1:]] += 1
            levels.append(_level(dict(continuation)))
            upper = continuation
        self._levels = levels[::-1]
        """``_levels[n - 1]`` is order n (context length n - 1)."""

    def prob(self, context: bytes, symbol: int) -> float:
        """P(symbol | the last ``order - 1`` characters of ``context``)."""
        context = context[len(context) - self.order + 1 :] if self.order > 1 else b""
        p = 1.0 / self.vocab
        w = bytes((symbol,))
        for n in range(1, len(context) + 2):
            level = self._levels[n - 1]
            h = context[len(context) - n + 1 :] if n > 1 else b""
            total = level.context_total.get(h, 0)
            if total == 0:
                continue
            c = level.counts.get(h + w, 0)
            p = (c - level.discount(c) + level.context_reserved[h] * p) / total
        return p

    def log_probs(self, ids: Ids) -> list[float]:
        """log P(ids[i] | ids[: i]) for i in 1 .. len - 1 (context within ``ids`` only)."""
        data = ids.astype(np.uint8).tobytes()
        k = self.order - 1
        return [math.log(self.prob(data[max(0, i - k) : i], data[i])) for i in range(1, len(data))]

    def perplexity(self, ids: Ids) -> float:
        return math.exp(-float(np.mean(self.log_probs(ids))))


@dataclass(frozen=True)
class NgramChoice:
    order: int
    validation_perplexity: dict[int, float]


def choose_order(
    train: Ids, vocab: int, validation_fraction: float, orders: Iterable[int] = KN_ORDERS
) -> NgramChoice:
    """Fit each order on the first part of ``train`` and keep the one with the lowest
    perplexity on its last ``validation_fraction`` (ties: the lower order)."""
    split = int(len(train) * (1.0 - validation_fraction))
    fit, validation = train[:split], train[split:]
    scores = {n: KneserNey(fit, n, vocab).perplexity(validation) for n in orders}
    best = min(scores, key=lambda n: (scores[n], n))
    return NgramChoice(order=best, validation_perplexity=scores)
