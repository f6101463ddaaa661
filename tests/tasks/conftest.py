"""Fixtures for the task tests: no network, and no writes to the user's datasets cache."""

from __future__ import annotations

import datasets
import huggingface_hub.constants
import pytest


@pytest.fixture(autouse=True)
def hermetic_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Both libraries read HF_HUB_OFFLINE at import time, so the env var alone would be too late; offline
    # mode makes a hub lookup fail at once instead of retrying for ~25 s without a network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
    datasets.disable_progress_bars()
