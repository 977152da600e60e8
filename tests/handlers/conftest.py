"""Handler-test fixtures shared by modules: LivePortrait's random weights and a runtime that loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.liveportrait.random_weights import write_random_weights
from handlers.runtime import WorkerRuntime


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random LivePortrait weights in the official layout, written once per test run."""
    return write_random_weights(tmp_path_factory.mktemp("liveportrait"), seed=4)


@pytest.fixture
def lp_runtime(runtime: WorkerRuntime, weights_root: Path) -> WorkerRuntime:
    """LIVEPORTRAIT_DIR at the random weights, networks fed at 128 px to keep the CPU cost low."""
    settings = runtime.settings.model_copy(update={"liveportrait_dir": weights_root, "liveportrait_input_size": 128})
    return runtime.with_settings(settings)
