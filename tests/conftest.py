from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from server.config import Settings  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path, tiny_model_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model=str(tiny_model_path), chunk_tokens=48, chunk_overlap=8)


@pytest.fixture
def rift(settings: Settings):
    from server.service import Rift

    app = Rift(settings).start(background=False)
    yield app
    app.close()


@pytest.fixture
def engine(rift):
    return rift.engine()
