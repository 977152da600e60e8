"""Start-up in two parts (handlers.warmup): the CPU part loads the CPU engines and imports the neural engines'
modules without loading them or touching CUDA; ``load_engines`` afterwards loads the neural engine, on the
device the restored container has (what Modal's CPU memory snapshot relies on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import handlers
from engines import weights
from handlers.runtime import WorkerRuntime
from handlers.warmup import load_cpu_part
from tests.engines.wav2lip_fixtures import write_checkpoint


class NoFaces:
    """A stand-in face analyzer: these tests are about what loads when, and the GPU machine has no dlib model."""

    name = "none"

    def detect(self, image: np.ndarray, upsample: int = 0) -> list:
        return []

    def landmarks(self, image: np.ndarray, box: object) -> np.ndarray:
        raise AssertionError("not called at start-up")


@pytest.fixture
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("warmup")
    return {v: write_checkpoint(folder / f"{v}.pth", v) for v in ("wav2lip96", "wav2lip256")}


@pytest.fixture
def w2l_runtime(
    runtime: WorkerRuntime, two_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> WorkerRuntime:
    monkeypatch.setattr(weights, "MOUNT_DIRS", (tmp_path / "no-mount",))
    update = {
        "wav2lip96_checkpoint": two_checkpoints["wav2lip96"],
        "wav2lip256_checkpoint": two_checkpoints["wav2lip256"],
        "worker_tasks": "generate_video",
    }
    built = WorkerRuntime.build(runtime.settings.model_copy(update=update))
    built.engines.once(("face", "dlib_hog"), NoFaces)
    return built


def loaded_engines(runtime: WorkerRuntime) -> list[str]:
    """Names of the lip-sync engines the runtime holds (its once-store's keys start with the engine name)."""
    names = ("viseme_warp", "wav2lip96", "wav2lip256")
    return sorted({key[1] if key[0] == "lipsync" else key[0] for key in runtime.engines._loaded} & set(names))


def test_cpu_part_imports_the_neural_engine_and_loads_only_the_cpu_ones(w2l_runtime: WorkerRuntime) -> None:
    assert w2l_runtime.settings.served_tasks == ["generate_video"]
    assert load_cpu_part(w2l_runtime) == {"generate_video": "ok"}
    assert "engines.lipsync.wav2lip" in sys.modules
    assert loaded_engines(w2l_runtime) == ["viseme_warp"]
    assert handlers.load_engines(w2l_runtime) == {"generate_video": "ok"}
    expected = "wav2lip256" if torch.cuda.is_available() else "wav2lip96"  # auto's choice on this machine
    assert loaded_engines(w2l_runtime) == sorted(["viseme_warp", expected])


def test_tasks_without_a_cpu_part_are_left_to_load_engines(w2l_runtime: WorkerRuntime) -> None:
    assert load_cpu_part(w2l_runtime, ["generate_video", "live_session"]) == {"generate_video": "ok"}


def test_a_failing_cpu_part_is_reported_per_task(w2l_runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(runtime: WorkerRuntime) -> None:
        raise OSError("espeak data missing")

    monkeypatch.setitem(sys.modules["handlers.warmup"].CPU_PARTS, "generate_video", broken)
    assert load_cpu_part(w2l_runtime) == {"generate_video": "OSError: espeak data missing"}


# A fresh process: whether the CPU part initialises CUDA (a snapshot taken then would hold CUDA state the
# restored container cannot use), then where load_engines puts the neural engine.
PROBE = """
import json, sys, torch
sys.path.insert(0, ".")
import handlers
from handlers.runtime import WorkerRuntime
from handlers.warmup import load_cpu_part
from tests.handlers.test_warmup import NoFaces
runtime = WorkerRuntime.from_env()
runtime.engines.once(("face", "dlib_hog"), NoFaces)
status = load_cpu_part(runtime)
initialised = torch.cuda.is_initialized()
handlers.load_engines(runtime)
engine = next(v for k, v in runtime.engines._loaded.items() if k[0].startswith("wav2lip"))
print(json.dumps({"status": status, "cuda_initialised": initialised, "device": engine.device.type}))
"""


def probe_start_up(checkpoints: dict[str, Path], tmp_path: Path) -> dict:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WAV2LIP", "WEIGHTS_DIR"))},
        "WORKER_TASKS": "generate_video",
        "WEIGHTS_DIR": str(tmp_path / "no-weights"),
        "WAV2LIP96_CHECKPOINT": str(checkpoints["wav2lip96"]),
        "WAV2LIP256_CHECKPOINT": str(checkpoints["wav2lip256"]),
    }
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cpu_part_leaves_cuda_uninitialised(two_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    facts = probe_start_up(two_checkpoints, tmp_path)
    assert facts["status"] == {"generate_video": "ok"} and facts["cuda_initialised"] is False


@pytest.mark.cuda
def test_after_the_cpu_part_the_neural_engine_loads_on_cuda(two_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    facts = probe_start_up(two_checkpoints, tmp_path)
    assert facts["cuda_initialised"] is False and facts["device"] == "cuda"
