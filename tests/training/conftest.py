"""Tests that need torch (the ``train`` extra) are not collected where it is missing."""

from __future__ import annotations

import importlib.util

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = [
        "test_train.py",
        "test_export.py",
        "test_data_and_baselines.py",
        "test_probabilistic_training.py",
    ]
