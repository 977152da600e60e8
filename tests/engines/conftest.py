"""Fixtures shared by the SadTalker tests: random weights in the official layout, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SADTALKER_SEED = 3


@pytest.fixture(scope="session")
def sadtalker_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/checkpoints/`` with the 256 and 512 safetensors (one file, linked) and both mapping files."""
    from engines.sadtalker.random_weights import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("sadtalker"), seed=SADTALKER_SEED, sizes=(256, 512))
