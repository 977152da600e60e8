"""``pytest -m cuda`` on the test files that carry the marker (only those: the others import packages the GPU
image lacks), time-boxed, with JUnit reports in OUT; without CUDA every test skips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "pytest.mark.cuda"
REPORT = "cuda-tests.xml"
SLOW_REPORT = "cuda-tests-slow.xml"
COUNTS = ("tests", "passed", "failures", "errors", "skipped")


def marked_files(root: Path = REPO_ROOT) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "tests").rglob("test_*.py") if MARKER in p.read_text())


def summary(report: Path) -> dict[str, int]:
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def failed_names(report: Path) -> list[str]:
    root = ElementTree.parse(report).getroot()
    return [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]


def _pytest(out: Path, selection: str, report: Path, files: list[str], box_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-m", selection, "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    started = time.monotonic()
    with (out / "run.log").open("a") as log:
        log.write(f"\n===== pytest -m '{selection}' {' '.join(files)}\n")
        log.flush()
        process = subprocess.Popen(
            [*command, *files], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=max(1.0, box_s))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # pytest's own process group, started above
            process.wait()
            return {"status": "timeout", "error": f"`pytest -m '{selection}'` stopped after its {box_s:.0f} s box"}
    seconds = round(time.monotonic() - started, 1)
    if not report.is_file():
        return {"status": "error", "error": f"`pytest -m '{selection}'` exited {code} without a report"}
    return {"status": "ok", "seconds": seconds, "counts": summary(report), "failed": failed_names(report)}


def run_cuda_tests(out: Path, box_s: float) -> dict[str, Any]:
    """The quick CUDA tests first, then the slow ones (torch.compile) in what is left of the box, each run with
    its own report, so a slow test that runs out of time loses nothing of the others."""
    files, started = marked_files(), time.monotonic()
    runs = {"quick": _pytest(out, "cuda and not slow", out / REPORT, files, 0.6 * box_s)}
    runs["slow"] = _pytest(out, "cuda and slow", out / SLOW_REPORT, files, box_s - (time.monotonic() - started))
    counts = {key: sum(r.get("counts", {}).get(key, 0) for r in runs.values()) for key in COUNTS}
    text = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    problems = [r["error"] for r in runs.values() if r["status"] != "ok"]
    failed = [name for r in runs.values() for name in r.get("failed", [])]
    result = {"summary": text + "".join(f"; {p}" for p in problems), "counts": counts, "files": files}
    result |= {"failed": failed, "runs": runs}
    status = "ok" if not problems and not failed else "error"
    return {"status": status, "seconds": round(time.monotonic() - started, 1), "result": result} | {
        "error": "; ".join(problems + failed)
    }
