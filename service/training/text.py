"""Text for the character language model: its vocabulary, token ids and likelihood."""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from service.training.networks import CharLM

UNKNOWN_CHAR = "\ufffd"


def build_vocab(train_text: str, min_count: int) -> list[str]:
    """Sorted characters seen at least ``min_count`` times, plus the unknown character."""
    counts = Counter(train_text)
    kept = {c for c, k in counts.items() if k >= min_count}
    kept.add(UNKNOWN_CHAR)
    return sorted(kept)


def encode(text: str, vocab: list[str]) -> npt.NDArray[np.int64]:
    """Token ids of ``text``; characters outside ``vocab`` become the unknown character."""
    index = {c: i for i, c in enumerate(vocab)}
    unknown = index[UNKNOWN_CHAR]
    return np.fromiter((index.get(c, unknown) for c in text), dtype=np.int64, count=len(text))


def lm_nll(model: CharLM, ids: npt.NDArray[np.int64], chunk: int = 2048) -> float:
    """Mean negative log-likelihood of ``ids[1:]``, running through ``ids`` carrying state."""
    state = model.zero_state(1)
    total = 0.0
    count = 0
    tokens = torch.from_numpy(ids)
    with torch.no_grad():
        for s in range(0, len(ids) - 1, chunk):
            x = tokens[s : min(s + chunk, len(ids) - 1)][None]
            y = tokens[s + 1 : s + 1 + x.shape[1]]
            logits, state = model.run(x, state)
            total += float(nn.functional.cross_entropy(logits[0], y, reduction="sum"))
            count += int(y.shape[0])
    return total / count
