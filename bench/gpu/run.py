"""The GPU run's core (``bench/gpu.sh`` calls it): every section in its own time-boxed process, one JSON file
of everything measured and a readable table, written into OUT.

    python -m bench.gpu.run OUT [--profile gpu|cpu] [--bundle var/gpu-bundle] [--engines a,b] [--work DIR]

Order: inputs (face recording, portrait, avatar, text); the engines' random weights written in the background;
``pytest -m cuda``; per engine a fresh process (cold start to the first frame, the engine's figures,
generate_video end to end); the torch.compile variants with the time left. A section that fails or runs out
of its box records its error and the run goes on; the whole stays inside the profile's budget."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.gpu import report  # noqa: E402
from bench.gpu.cuda_tests import run_cuda_tests  # noqa: E402
from bench.gpu.profiles import PROFILES, Profile  # noqa: E402
from bench.gpu.specs import engines  # noqa: E402
from bench.gpu.worker import Work, settings_env  # noqa: E402

RESULTS = "results.json"
TABLE = "table.md"
LOG = "run.log"
MIN_BOX_S = 8.0  # a section is not started with less time than this left
RESERVE_S = 4.0  # kept for writing the results


class Runner:
    def __init__(self, out: Path, work: Work, profile: Profile, time_scale: float = 1.0) -> None:
        self.out, self.work, self.profile, self.time_scale = out, work, profile, time_scale
        self.started = time.monotonic()
        self.sections: dict[str, dict[str, Any]] = {}
        self.log = (out / LOG).open("a")

    def left_s(self) -> float:
        return self.profile.budget_s * self.time_scale - (time.monotonic() - self.started) - RESERVE_S

    def box(self, kind: str, sharing: int = 1) -> float:
        """The section's box: its own, at most an even share of what is left among ``sharing`` sections to run."""
        return min(self.profile.sections_box_s[kind] * self.time_scale, self.left_s() / max(1, sharing))

    def spawn(self, kind: str, engine: str | None, box_s: float) -> tuple[subprocess.Popen, Path]:
        result = self.work.root / f"{kind}-{engine or 'all'}.json"
        command = [sys.executable, "-m", "bench.gpu.section", kind, "--profile", self.profile.name]
        command += ["--work", str(self.work.root), "--result", str(result), "--box-s", f"{box_s:.0f}"]
        command += ["--spawned-at", f"{time.time():.6f}"] + (["--engine", engine] if engine else [])
        spec = next((e for e in engines() if e.name == engine), None)
        env = {**os.environ, **settings_env(self.work, spec, self.profile), "PYTHONUNBUFFERED": "1"}
        with result.with_suffix(".log").open("w") as log:  # its own log (sections overlap): into run.log after
            log.write(f"\n===== {kind} {engine or ''} (box {box_s:.0f} s)\n")
            log.flush()
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return process, result

    def finish(self, name: str, process: subprocess.Popen, result: Path, box_s: float, started: float) -> None:
        try:
            code = process.wait(timeout=max(0.0, box_s - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the section's own process group, started above
            process.wait()
            code = None
        section_log = result.with_suffix(".log").read_text(errors="replace")
        self.log.write(section_log)
        self.log.flush()
        record: dict[str, Any] = {"seconds": round(time.monotonic() - started, 1)}
        if code is None:
            record |= {"status": "timeout", "error": f"stopped after its {box_s:.0f} s box"}
        elif code != 0 or not result.is_file():
            record |= {"status": "error", "error": "\n".join(section_log.splitlines()[-12:])}
        else:
            record |= {"status": "ok"}
        if result.is_file():  # complete, or what a stopped section had measured so far
            record["result"] = json.loads(result.read_text())
        self.sections[name] = record
        print(f"  {name:28} {record['status']:8} {record['seconds']:6.1f} s", flush=True)

    def section(self, kind: str, engine: str | None, sharing: int = 1) -> None:
        name = f"{kind}:{engine}" if engine else kind
        box_s = self.box(kind, sharing)
        if box_s < MIN_BOX_S:
            self.sections[name] = {"status": "skipped", "error": "out of time (the run's budget is spent)"}
            print(f"  {name:28} skipped (out of time)", flush=True)
            return
        started = time.monotonic()
        process, result = self.spawn(kind, engine, box_s)
        self.finish(name, process, result, box_s, started)


def where(profile: Profile) -> str:
    host = platform.node()
    if profile.device == "cuda":
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        try:
            gpu = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            gpu = "nvidia-smi unavailable"
        return f"GPU run on {host}: {gpu or 'no GPU listed'}"
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return f"CPU run (small sizes) on {host}: {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "var" / "gpu-bundle")
    parser.add_argument("--engines", default="", help="comma list (default: every engine)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply the budget and every box (a busy shared CPU, tests)"
    )
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-run-") as tmp:
        work = Work(args.work or Path(tmp))
        results = run(args.out, work, profile, args.bundle, [e for e in args.engines.split(",") if e], args.time_scale)
    if "inputs" in results["sections"]:
        raise SystemExit(f"no inputs, nothing measured: {results['sections']['inputs']['error']}")


def run(
    out: Path, work: Work, profile: Profile, bundle: Path, wanted: list[str], time_scale: float = 1.0
) -> dict[str, Any]:
    import torch

    from bench.gpu.inputs import prepare

    runner = Runner(out, work, profile, time_scale)
    chosen = [e for e in engines() if not wanted or e.name in wanted]
    ran = {"where": where(profile), "profile": profile.name, "python": platform.python_version()}
    ran |= {"torch": torch.__version__, "engines": [e.name for e in chosen], "sizes": profile.as_dict()}
    ran["papers"] = {e.name: e.paper for e in chosen}
    print(f"{ran['where']}; torch {ran['torch']}, python {ran['python']}", flush=True)
    try:
        ran["inputs"] = prepare(work, profile, bundle if bundle.is_dir() else None)
    except Exception as exc:  # nothing can be measured without the inputs: say why, in the results too
        ran["inputs"] = {"error": f"{type(exc).__name__}: {exc}"}
        runner.sections["inputs"] = {"status": "error", "error": ran["inputs"]["error"]}
        return write_results(out, ran, runner)
    print(f"  inputs: {ran['inputs']}", flush=True)
    writer_started = time.monotonic()
    writer = runner.spawn("weights", None, runner.box("weights"))
    runner.sections["cuda_tests"] = run_cuda_tests(out, min(profile.pytest_box_s * time_scale, runner.left_s()))
    print(f"  {'cuda_tests':28} {runner.sections['cuda_tests']['status']:8}", flush=True)
    runner.finish("weights", *writer, runner.box("weights"), writer_started)  # no CPU contention after
    compiled = [e for e in chosen if e.name in profile.compile]
    for done, engine in enumerate(chosen):  # every engine gets its share even when time runs short
        runner.section("engine", engine.name, sharing=len(chosen) - done)
    for done, engine in enumerate(compiled):  # then torch.compile, with what is left
        runner.section("compile", engine.name, sharing=len(compiled) - done)
    return write_results(out, ran, runner)


def write_results(out: Path, ran: dict[str, Any], runner: Runner) -> dict[str, Any]:
    ran["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ran["seconds"] = time.monotonic() - runner.started
    results = {"ran": ran, "sections": runner.sections}
    (out / RESULTS).write_text(json.dumps(results, indent=1, default=str))
    (out / TABLE).write_text(report.table(results))
    print("\n" + (out / TABLE).read_text(), flush=True)
    return results


if __name__ == "__main__":
    main()
