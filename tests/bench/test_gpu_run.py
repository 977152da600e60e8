"""``bench/gpu.sh --cpu``: the GPU run's script on this machine, small sizes, importing only what the GPU image
and the bundle hold (``--image-guard``), so CI keeps it working: every section finishes, every engine gets its
figures, the CUDA tests are found and skip, and the results come out as JSON plus a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import bundle, model_paths
from bench.gpu.profiles import PROFILES
from bench.gpu.specs import engines

REPO_ROOT = Path(__file__).resolve().parents[2]
TIME_SCALE = "6"  # the boxes are sized for an idle machine; CI and shared machines are slower


@pytest.mark.slow
def test_cpu_run_measures_every_engine_with_only_the_gpu_image_and_the_bundle(tmp_path: Path) -> None:
    bundle.make(tmp_path / "bundle", wheels=False)  # the recorded faces: dlib is not importable under the guard
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BUNDLE": str(tmp_path / "bundle")}
    command = ["bench/gpu.sh", "--cpu", "--image-guard", str(out), "--time-scale", TIME_SCALE]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    log = (out / "run.log").read_text() if (out / "run.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    assert done.stdout.splitlines()[0].startswith("bench/gpu.sh --cpu: CPU run (small sizes) on ")

    results = json.loads((out / "results.json").read_text())
    sections = results["sections"]
    names = [e.name for e in engines()]
    compiled = [f"compile:{n}" for n in names if n in PROFILES["cpu"].compile]  # a no-op on a CPU: the code path
    assert set(sections) == {"cuda_tests", "weights", *(f"engine:{n}" for n in names), *compiled}
    failed = {name: s.get("error") for name, s in sections.items() if s["status"] != "ok"}
    assert failed == {}, failed
    tests = sections["cuda_tests"]["result"]["counts"]
    assert tests["skipped"] == tests["tests"] >= 10  # found, and skipped without CUDA
    for name in names:
        figures = sections[f"engine:{name}"]["result"]
        assert figures.get("errors", {}) == {}, (name, figures["errors"])
        assert figures["cold_start"]["to_first_frame_s"] > 0 and figures["cold_start"]["page_cache_dropped"]
        assert figures["render"]["frames"] > 0 and figures["generate_video"]["first"]["frames"] > 0
        assert figures["model"] or name not in model_paths.CASES, name  # fp32 against the automatic precision
    table = (out / "table.md").read_text()
    assert all(f"| {name} |" in table for name in names) and "did not finish" not in table
    assert (out / "cuda-tests.xml").is_file()
