"""Training the character language model and measuring it against n-gram baselines."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.models.manifest import (
    Feedback,
    GraphSpec,
    LogitsOutput,
    Manifest,
    Parity,
    Provenance,
    TextInput,
)
from service.training import baselines
from service.training.data import load_pydoc_topics
from service.training.networks import CharLM
from service.training.ngram import KneserNey, choose_order
from service.training.pipeline import (
    PLACEHOLDER_SHA,
    Evaluation,
    TrainResult,
    export_and_verify,
    finish,
    fit,
    library_versions,
    set_determinism,
    state_specs,
)
from service.training.recipes import CharLMRecipe
from service.training.text import UNKNOWN_CHAR, build_vocab, encode, lm_nll

KN_VALIDATION_FRACTION = 0.1
"""The part of the training text (its end) the n-gram's order is chosen on."""


def split_text(recipe: CharLMRecipe, text: str) -> tuple[str, str]:
    """Training text and held-out tail. With ``recipe.validate`` the tail is dropped first and
    the end of the training text is held out instead (for choosing hyperparameters)."""
    if recipe.validate:
        text = text[: int(len(text) * (1.0 - recipe.test_fraction))]
    split_at = int(len(text) * (1.0 - recipe.test_fraction))
    return text[:split_at], text[split_at:]


def train_charlm(
    recipe: CharLMRecipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    set_determinism(recipe.seed)
    corpus = load_pydoc_topics()
    text = corpus.text if recipe.limit_rows is None else corpus.text[: recipe.limit_rows]
    train_text, test_text = split_text(recipe, text)
    vocab = build_vocab(train_text, recipe.min_count)
    train_ids = encode(train_text, vocab)
    test_ids = encode(test_text, vocab)
    v = len(vocab)

    model = CharLM(recipe.cell, v, recipe.embed, recipe.hidden, recipe.layers, recipe.dropout)
    rng = np.random.default_rng(recipe.seed)
    windows = recipe.windows_per_epoch or max(len(train_ids) // recipe.window, 1)
    steps_per_epoch = max(windows // recipe.batch_size, 1)
    tokens = torch.from_numpy(train_ids)
    last_start = len(train_ids) - recipe.window - 1
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> torch.Tensor:
        starts = rng.integers(0, last_start + 1, size=recipe.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(recipe.window)[None, :])
        logits, _ = model.run(tokens[idx], model.zero_state(recipe.batch_size))
        loss: torch.Tensor = loss_fn(logits.reshape(-1, v), tokens[idx + 1].reshape(-1))
        return loss

    started = time.perf_counter()
    batches = recipe.epochs * steps_per_epoch
    fit(model, batches, step, recipe.lr, recipe.name, progress, recipe.weight_decay)
    train_seconds = time.perf_counter() - started

    evaluation = evaluate_charlm(model, train_ids, test_ids, v)
    graph = GraphSpec(input="tokens", output="logits", input_dtype="int64")
    example = torch.zeros(2, 5, dtype=torch.int64)
    probe = np.random.default_rng(recipe.seed + 1).integers(0, v, size=(3, 13), dtype=np.int64)
    onnx_bytes, parity = export_and_verify(model, example, probe, graph)

    held = "validation tail (end of the training text)" if recipe.validate else "held-out tail"
    split = (
        f"train: first {len(train_text)} characters; {held}: last {len(test_text)} "
        f"characters ({recipe.test_fraction:.0%}); topics joined in sorted key order; "
        f"characters seen fewer than {recipe.min_count} times in training map to U+FFFD; "
        f"n-gram order chosen on the last {KN_VALIDATION_FRACTION:.0%} of the training text"
    )
    manifest = Manifest(
        name=recipe.name,
        version=1,
        description=recipe.description,
        task="language_model",
        cell=recipe.cell,
        layers=recipe.layers,
        hidden_size=recipe.hidden,
        sha256=PLACEHOLDER_SHA,
        graph=graph,
        input=TextInput(vocab_size=v, vocab=vocab, unknown_id=vocab.index(UNKNOWN_CHAR)),
        output=LogitsOutput(size=v),
        state=state_specs(model),
        feedback=Feedback(autoregressive=True),
        training=Provenance(
            dataset=corpus.dataset,
            package=corpus.package,
            package_version=corpus.package_version,
            source=corpus.source,
            rows=len(text),
            split=split,
        ),
        metrics=evaluation.metrics,
        headline_metric="perplexity",
        parity=Parity(torch_vs_onnx=parity.torch_vs_onnx, step_vs_whole=parity.step_vs_whole),
        libraries=library_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return finish(manifest, onnx_bytes, evaluation, parity, train_seconds, store, strict)


def ngram_metrics(train_ids: np.ndarray, test_ids: np.ndarray, vocab: int) -> dict[str, float]:
    """Held-out perplexity of the unigram, bigram and Kneser-Ney baselines; the Kneser-Ney
    order is chosen on the end of the training text."""
    choice = choose_order(train_ids, vocab, KN_VALIDATION_FRACTION)
    kn = KneserNey(train_ids, choice.order, vocab)
    return {
        "perplexity_unigram": baselines.unigram_perplexity(train_ids, test_ids, vocab),
        "perplexity_bigram": baselines.bigram_perplexity(train_ids, test_ids, vocab),
        "perplexity_kneser_ney": kn.perplexity(test_ids),
        "kneser_ney_order": float(choice.order),
    }


def evaluate_charlm(
    model: CharLM, train_ids: np.ndarray, test_ids: np.ndarray, vocab: int
) -> Evaluation:
    metrics = {"perplexity": math.exp(lm_nll(model, test_ids))}
    metrics.update(ngram_metrics(train_ids, test_ids, vocab))
    evaluation = Evaluation(
        metrics=metrics,
        headline="perplexity",
        baseline_keys=["perplexity_unigram", "perplexity_bigram", "perplexity_kneser_ney"],
    )
    evaluation.check()
    return evaluation
