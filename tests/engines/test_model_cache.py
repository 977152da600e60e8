"""Weights from RunPod's model cache: a fake cache folder in the Hugging Face layout
(``models--{org}--{name}/{refs,snapshots,blobs}``, snapshot files linking to blobs named by their sha256),
found by the weights resolver beside the weights folder and the volume mounts."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

from engines import weights
from engines.errors import EngineError
from engines.model_cache import hub_file, model_cache_view, snapshot
from handlers import engine_choice
from handlers.runtime import WorkerRuntime

COMMIT = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"


def cache_repo(hub: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT, ref: bool = True) -> Path:
    """One repository in a Hub cache, as huggingface_hub writes it; returns its snapshot folder."""
    model = hub / f"models--{repo.replace('/', '--')}"
    folder = model / "snapshots" / commit
    for path, content in files.items():
        digest = hashlib.sha256(content).hexdigest()
        blob = model / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = folder / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (model / "refs").mkdir(parents=True, exist_ok=True)
        (model / "refs" / "main").write_text(commit)
    return folder


def repository_files(names: tuple[str, ...]) -> dict[str, dict[str, bytes]]:
    """The manifest entries' files grouped by their Hugging Face repository, with small distinct contents."""
    grouped: dict[str, dict[str, bytes]] = {}
    for name in names:
        source = hub_file(weights.BY_NAME[name].url)
        grouped.setdefault(source.repo, {})[source.path] = f"{name} weights".encode()
    return grouped


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache as RUNPOD_MODEL_CACHE, no volume mounts, the view's links made under tmp_path."""
    folder = tmp_path / "huggingface-cache" / "hub"
    folder.mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(weights, "RUNPOD_MODEL_CACHE", folder)
    monkeypatch.setattr(weights, "MOUNT_DIRS", (tmp_path / "no-mount",))
    return folder


def test_manifest_urls_map_to_cache_paths() -> None:
    source = hub_file(weights.BY_NAME["liveportrait_warping"].url)
    assert (source.repo, source.revision, source.path) == (
        "KwaiVGI/LivePortrait",
        "main",
        "liveportrait/base_models/warping_module.pth",
    )
    assert hub_file(weights.BY_NAME["musetalk_vae"].url).repo == "stabilityai/sd-vae-ft-mse"
    assert hub_file(weights.BY_NAME["wav2lip256"].url) is None  # Google Drive: never in a Hub cache


def test_liveportrait_declared_as_the_endpoint_model_is_found_and_verified(hub: Path) -> None:
    for repo, files in repository_files(weights.fetch_groups()["liveportrait"]).items():
        cache_repo(hub, repo, files)
    root = weights.find_engine_root("liveportrait", None)
    assert root is not None and root.name == "liveportrait" and root.parent in weights.search_dirs(None)
    entry, path = weights.find_for_engine("liveportrait", None)
    assert path.read_bytes() == b"liveportrait_warping weights"
    assert weights.resolve("liveportrait_warping", None).verified is True  # against the blob's sha256 name
    assert weights.verify_engine_files(entry, path) is True


def test_musetalk_from_three_cached_repositories_sits_in_one_folder(hub: Path) -> None:
    names = weights.fetch_groups()["musetalk"][:-1]  # the face-parsing file comes from Google Drive
    for repo, files in repository_files(names).items():
        cache_repo(hub, repo, files)
    assert {hub_file(weights.BY_NAME[n].url).repo for n in names} == {
        "TMElyralab/MuseTalk",
        "stabilityai/sd-vae-ft-mse",
        "openai/whisper-tiny",
    }
    root = weights.find_musetalk_root(None)
    assert (root / "sd-vae" / "config.json").read_bytes() == b"musetalk_vae_config weights"
    assert (root / "whisper" / "pytorch_model.bin").read_bytes() == b"musetalk_whisper weights"


def test_a_damaged_blob_is_a_checksum_mismatch(hub: Path) -> None:
    folder = cache_repo(hub, "KwaiVGI/LivePortrait", {"liveportrait/base_models/warping_module.pth": b"good"})
    (folder / "liveportrait/base_models/warping_module.pth").resolve().write_bytes(b"bad!")
    with pytest.raises(EngineError) as err:
        weights.resolve("liveportrait_warping", None)
    assert err.value.code == "checksum_mismatch"


def test_the_weights_folder_comes_first_and_a_cache_without_our_models_adds_nothing(hub: Path, tmp_path: Path) -> None:
    cache_repo(hub, "someone/other-model", {"model.safetensors": b"x"})
    assert weights.search_dirs(tmp_path / "mine") == [tmp_path / "mine", tmp_path / "no-mount"]
    cache_repo(hub, "KwaiVGI/LivePortrait", {"liveportrait/base_models/warping_module.pth": b"cached"})
    mine = tmp_path / "mine" / "liveportrait/base_models/warping_module.pth"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    dirs = weights.search_dirs(tmp_path / "mine")
    assert dirs[0] == tmp_path / "mine" and len(dirs) == 3  # mine, the cache's view, the mounts
    assert weights.locate(weights.BY_NAME["liveportrait_warping"], dirs) == mine


def test_snapshot_without_refs_is_the_newest_and_a_dangling_ref_is_none(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    cache_repo(hub, "org/name", {"a.bin": b"1"}, commit="old", ref=False)
    newer = cache_repo(hub, "org/name", {"a.bin": b"2"}, commit="new", ref=False)
    os.utime(newer, ns=(10**19, 10**19))
    assert snapshot(hub, "org/name", "main") == newer
    assert snapshot(hub, "org/name", "old").name == "old"  # a commit named directly
    (hub / "models--org--name" / "refs").mkdir()
    (hub / "models--org--name" / "refs" / "main").write_text("gone")
    assert snapshot(hub, "org/name", "main") is None
    assert (
        model_cache_view(tmp_path / "no-such-hub", [("a.bin", "https://huggingface.co/org/name/resolve/main/a.bin")])
        is None
    )


def test_health_reports_the_cached_engine(hub: Path, runtime: WorkerRuntime) -> None:
    for repo, files in repository_files(weights.fetch_groups()["liveportrait"]).items():
        cache_repo(hub, repo, files)
    found = engine_choice.present_weights("liveportrait", runtime.settings)
    assert found is not None and found.origin == "liveportrait_warping"
    described = engine_choice.describe(runtime)
    assert any(w["engine"] == "liveportrait" and w["commercial_use"] for w in described["weights"])
