"""latents.pt that declares more than it holds (issue 20): shapes, element counts and strides are checked
against the avatar's frame count before any copy, and refusing costs at most a few MB above the file's size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storage.avatar.layout import LATENTS
from storage.avatar.reader import read_latents
from tests.storage.tensor_bombs import FRAMES, hostile_latents, peak_rss_growth

CASES = hostile_latents()
SLACK_MB = 8  # allocator and interpreter noise above the file's own bytes


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legit latents.pt, read by each child before its case: the case is measured, not torch's first load."""
    folder = tmp_path_factory.mktemp("warm")
    torch.save([torch.zeros(1, 8, 32, 32)] * FRAMES, folder / LATENTS)
    return folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_latents_are_refused_before_any_copy(name: str, warm: Path, tmp_path: Path) -> None:
    """Class: tensor bombs in latents.pt (zero or overlapping strides, references, storages larger than their
    records, compressed records, legacy format, oversized pickles): invalid_avatar, peak RSS near the file size."""
    CASES[name](tmp_path / LATENTS)
    size_mb = (tmp_path / LATENTS).stat().st_size / 2**20
    code, growth_mb = peak_rss_growth(lambda: read_latents(tmp_path, FRAMES), lambda: read_latents(warm, FRAMES))
    assert code == "invalid_avatar", f"{name}: {code}"
    assert growth_mb <= size_mb + SLACK_MB, f"{name}: peak RSS rose {growth_mb:.1f} MiB for a {size_mb:.2f} MiB file"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_legit_latents_still_read(dtype: torch.dtype, tmp_path: Path) -> None:
    """Class: compatibility: LiveTalking's cycle list (each tensor named twice), views of one batch, and one
    stacked tensor all read as (N, 8, 32, 32) float32."""
    frames = [torch.randn(1, 8, 32, 32).to(dtype) for _ in range(3)]
    batch = torch.randn(6, 8, 32, 32).to(dtype)
    for value in (frames + frames[::-1], [batch[i : i + 1] for i in range(6)], batch):
        torch.save(value, tmp_path / LATENTS)
        assert read_latents(tmp_path, 6).shape == (6, 8, 32, 32)
