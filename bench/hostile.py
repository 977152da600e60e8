"""Hostile inputs against a worker and the API, by attack class (tests/storage/hostile_classes.py): each case
through handlers.dispatch (or the API's input rule) in a forked child under RLIMIT_AS 2 GiB and RLIMIT_FSIZE
1 GiB; floods against a running API.

Prints one line per case, then per class and in all: cases, clean refusals (the expected outcome), crashes (a
child that died: must be 0), peak RSS of a child, bytes left in the avatar cache (must be 0), leaks (must be 0)
and the class's own figures (the stream flood's /healthz and GET /v1/jobs p95).

    PYTHONPATH=. python bench/hostile.py [--quick] [--only CLASS ...]   # --quick leaves out the decompression bombs
    PYTHONPATH=. python bench/hostile.py --list
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ADDRESS_SPACE = 2 * 1024**3
FILE_SIZE = 1024**3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the decompression bombs")
    parser.add_argument("--only", action="append", metavar="CLASS", help="run this class (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the classes and exit")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    (work / "store").mkdir()
    os.environ.update(
        AVATAR_STORE_URI=(work / "store").as_uri(),
        AVATAR_LOCAL_PATH=str(work / "cache"),
        WEIGHTS_DIR=str(work / "weights"),
        ALLOW_FILE_URIS="1",
    )
    import handlers
    from tests.storage.avatar_hostile import address_space_now
    from tests.storage.hostile_classes import CLASSES, Corpus

    if args.list:
        for name, (description, _) in CLASSES.items():
            print(f"{name:10} {description}")
        return 0
    unknown = sorted(set(args.only or ()) - set(CLASSES))
    if unknown:
        parser.error(f"unknown class {', '.join(unknown)}; --list shows them")
    runtime = handlers.worker_runtime()
    handlers.load_engines(runtime, handlers.WORK_TASKS)  # loaded once; children inherit them
    parent_vsz = address_space_now()
    if parent_vsz > ADDRESS_SPACE // 2:
        raise SystemExit(f"the parent already maps {parent_vsz >> 20} MiB: a 2 GiB child cap would test nothing")
    corpus = Corpus(work, runtime, ADDRESS_SPACE, FILE_SIZE, big=not args.quick)
    started = time.perf_counter()
    reports = []
    for name in args.only or CLASSES:
        class_started = time.perf_counter()
        print(f"\n== {name}: {CLASSES[name][0]}")
        print(f"{'case':44} {'attack':8} {'result':24} {'rss MB':>7}  cache bytes")
        report = CLASSES[name][1](corpus)
        reports.append(report)
        print("\n".join(report.rows))
        figures = "".join(f", {key} {value}" for key, value in report.figures.items())
        print(
            f"-- {name}: cases {report.cases}, clean refusals {report.refused}, crashes {report.crashes}, "
            f"peak RSS {report.peak_rss_mb:.0f} MB, bytes left {report.bytes_left}, leaks {report.leaks}{figures}, "
            f"{time.perf_counter() - class_started:.1f} s"
        )
    cases, refused = sum(r.cases for r in reports), sum(r.refused for r in reports)
    print(
        f"\nall: cases {cases}, clean refusals {refused}, crashes {sum(r.crashes for r in reports)}, "
        f"peak RSS {max((r.peak_rss_mb for r in reports), default=0):.0f} MB (parent at fork {parent_vsz >> 20} MiB "
        f"mapped), bytes left {max((r.bytes_left for r in reports), default=0)}, leaks "
        f"{sum(r.leaks for r in reports)}, {time.perf_counter() - started:.1f} s"
    )
    for report in reports:
        for line in report.unexpected:
            print(f"UNEXPECTED [{report.name}] {line}")
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
