"""Shared fixtures: a tiny random Llama on disk (built once per session) and a clean environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.processes import stop_processes_naming
from tests.tiny_model import build_tiny_llama

# Tests never reach the network: the Hub clients fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a chat-template tokenizer, saved as safetensors."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_without_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-plain"), chat_template=None)


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """QLORA_BOT_HOME in a temp folder, so no test writes to the real data directory."""
    home = tmp_path / "home"
    monkeypatch.setenv("QLORA_BOT_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _no_detached_serve_worker_outlives_its_test(request: pytest.FixtureRequest):
    """An `ask` leaves its serve worker running for later asks (until `serve.idle_timeout_s`); a test's
    data directory lies under its tmp_path, so what names that folder is stopped when the test ends."""
    # Looked up before the test: a fixture cannot be requested once teardown has begun.
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        stop_processes_naming(f"{folder}/")
