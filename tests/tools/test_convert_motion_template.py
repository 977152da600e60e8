"""tools.convert_motion_template: upstream's pickled motion template -> the .npz workers read, outside workers only.

The pickles are written here in upstream's shape (``make_motion_template``: per-frame dicts of float32 arrays
with a batch axis of 1, ``c_eyes_lst`` / ``c_lip_lst``, ``n_frames``, ``output_fps``) and one in its older key names.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from engines.liveportrait.motion_file import load_motion
from tools.convert_motion_template import WORKER_MARKERS, main


def upstream_template(frames: int = 3, old_keys: bool = False) -> dict:
    rng = np.random.default_rng(0)
    motion = []
    for _ in range(frames):
        item = {
            "scale": rng.random((1, 1), np.float32),
            "R": rng.random((1, 3, 3), np.float32),
            "exp": rng.random((1, 21, 3), np.float32),
            "t": rng.random((1, 3), np.float32),
            "kp": rng.random((1, 21, 3), np.float32),
            "x_s": rng.random((1, 21, 3), np.float32),
        }
        if old_keys:
            item["R_d"] = item.pop("R")
            del item["kp"], item["x_s"]
        motion.append(item)
    eyes = [rng.random((1, 2), np.float32) for _ in range(frames)]
    lips = [rng.random((1, 1), np.float32) for _ in range(frames)]
    names = ("c_d_eyes_lst", "c_d_lip_lst") if old_keys else ("c_eyes_lst", "c_lip_lst")
    return {"n_frames": frames, "output_fps": 30, "motion": motion, names[0]: eyes, names[1]: lips}


@pytest.fixture(autouse=True)
def not_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WORKER_MARKERS:
        monkeypatch.delenv(name, raising=False)


def test_an_upstream_template_converts_to_the_same_numbers(tmp_path: Path) -> None:
    template = upstream_template()
    (tmp_path / "d0.pkl").write_bytes(pickle.dumps(template))
    assert main([str(tmp_path / "d0.pkl"), str(tmp_path / "d0.npz")]) == 0
    motion = load_motion(tmp_path / "d0.npz", max_frames=10)
    assert motion.fps == 30 and len(motion) == 3
    np.testing.assert_array_equal(motion.exp[1], template["motion"][1]["exp"][0])
    np.testing.assert_array_equal(motion.R[2], template["motion"][2]["R"][0])
    np.testing.assert_array_equal(motion.c_eyes[0], template["c_eyes_lst"][0][0])


def test_older_key_names_convert(tmp_path: Path) -> None:
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(upstream_template(old_keys=True), protocol=2))
    assert main([str(tmp_path / "old.pkl"), str(tmp_path / "old.npz")]) == 0
    motion = load_motion(tmp_path / "old.npz", max_frames=10)
    assert not motion.kp.any() and motion.R.shape == (3, 3, 3)


class RunsCode:
    def __reduce__(self) -> tuple:
        return os.system, ("touch ran-code",)


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    template = upstream_template()
    template["motion"][0]["exp"] = RunsCode()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(template))
    assert main(["evil.pkl", "evil.npz"]) == 1
    assert not (tmp_path / "ran-code").exists() and not (tmp_path / "evil.npz").exists()
    assert "system: not part of a LivePortrait motion template" in capsys.readouterr().err


@pytest.mark.parametrize("marker", WORKER_MARKERS)
def test_it_refuses_to_run_inside_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str, capsys
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "d0.pkl").write_bytes(pickle.dumps(upstream_template()))
    monkeypatch.setenv(marker, "1")
    assert main([str(tmp_path / "d0.pkl"), str(tmp_path / "d0.npz")]) == 2
    assert not (tmp_path / "d0.npz").exists() and "inside a worker" in capsys.readouterr().err


def test_the_worker_images_say_they_are_workers() -> None:
    root = Path(__file__).resolve().parents[2]
    for image in ("images/Dockerfile.cpu", "images/Dockerfile.cuda", "modal_app.py"):
        assert "TALKING_HEAD_WORKER" in (root / image).read_text(), image
