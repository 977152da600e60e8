"""``pytest -m cuda`` on the test files that carry the marker (only those: the others import packages the GPU
image lacks), time-boxed, with its JUnit report in OUT; without CUDA every test skips."""

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


def run_cuda_tests(out: Path, box_s: float) -> dict[str, Any]:
    files = marked_files()
    report = out / REPORT
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    started = time.monotonic()
    with (out / "run.log").open("a") as log:
        log.write(f"\n===== pytest -m cuda {' '.join(files)}\n")
        log.flush()
        process = subprocess.Popen(
            [*command, *files], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=box_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # pytest's own process group, started above
            process.wait()
            return {"status": "timeout", "error": f"stopped after its {box_s:.0f} s box", "files": files}
    seconds = round(time.monotonic() - started, 1)
    if not report.is_file():
        return {"status": "error", "error": f"pytest exited {code} without a report", "seconds": seconds}
    counts = summary(report)
    text = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    result = {"summary": text, "counts": counts, "files": files, "failed": failed_names(report)}
    status = "ok" if counts["failures"] == counts["errors"] == 0 else "error"
    return {"status": status, "seconds": seconds, "result": result, "error": "; ".join(result["failed"])}
