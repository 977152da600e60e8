"""``make gpu-bundle``: a folder under its 60 MiB budget holding what bench/gpu.sh needs on a GPU machine with
no network: the recorded face analysis (always checked) and the wheels (skipped only when pip is offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench.gpu import bundle
from bench.gpu.faces import RecordedFaces, avatar_frames, avatar_key, portrait_bgr, read_recording, write_avatar
from bench.gpu.profiles import PROFILES
from engines.errors import EngineError
from engines.face import load_face_analyzer


@pytest.fixture(scope="module")
def faces_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("gpu-bundle")
    bundle.make(dest, wheels=False)
    return dest


def test_the_recording_answers_as_dlib_for_the_portrait_only(faces_bundle: Path) -> None:
    recorded = read_recording(faces_bundle)
    replayed, dlib = RecordedFaces(recorded), load_face_analyzer()
    portrait = portrait_bgr()
    [box] = replayed.detect(portrait)
    assert box == dlib.detect(portrait)[0]
    assert np.array_equal(replayed.landmarks(portrait, box), dlib.landmarks(portrait, box))
    with pytest.raises(EngineError) as err:
        replayed.detect(portrait[:, ::-1])  # any other picture: refused, never answered with the portrait's face
    assert err.value.code == "no_face" and "make gpu-bundle" in err.value.message


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_avatar_is_recorded_and_rebuilt_from_its_tables(
    faces_bundle: Path, tmp_path: Path, profile: str
) -> None:
    size = PROFILES[profile]
    recorded = read_recording(faces_bundle)
    tables = recorded["avatars"][avatar_key(size.avatar_side, size.avatar_frames)]
    assert len(tables["coords"]) == len(tables["landmarks"]) == size.avatar_frames
    if profile == "cpu":  # the GPU avatar (100 frames at 512 px) is checked the same way on the GPU machine
        folder, same = write_avatar(tmp_path / "a", size.avatar_side, size.avatar_frames, recorded)
        assert same and len(list((folder / "full_imgs").glob("*.png"))) == size.avatar_frames
        frame, dlib = avatar_frames(size.avatar_side, 1)[0], load_face_analyzer()
        assert np.allclose(tables["landmarks"][0], dlib.landmarks(frame, dlib.detect(frame)[0]))


def test_wheels_for_the_gpu_python_under_the_budget(tmp_path: Path) -> None:
    try:
        manifest = bundle.make(tmp_path / "bundle")
    except RuntimeError as exc:
        pytest.skip(f"wheel download skipped: pip is offline here ({str(exc).splitlines()[0]})")
    wheels = {name: size for name, size in manifest["files"].items() if name.startswith("wheels/")}
    assert manifest["bytes"] <= bundle.BUDGET_MIB * 2**20 and manifest["missing_requirements"] == []
    names = {bundle.normal(Path(name).name.split("-")[0]) for name in wheels}
    assert names == {bundle.normal(n) for n in bundle.listed("bundle_packages.txt")}
    assert "face-recognition-models" not in names and "torch" not in names
    for name in wheels:  # pure Python, the stable ABI, or built for CPython 3.12 on manylinux x86_64
        tags = Path(name).stem.split("-")[-3:]
        assert tags[0] in ("py3", "cp312") or tags[1] == "abi3", name
        assert tags[2] == "any" or re.search(r"manylinux.*x86_64", tags[2]), name
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["bytes"] == manifest["bytes"]
