"""Hostile inputs against a worker: every case of our corpus through handlers.dispatch, each in a forked
child under RLIMIT_AS 2 GiB and RLIMIT_FSIZE 1 GiB.

Prints one line per case, then: cases, clean refusals (the expected error_code), crashes (a child that
died: must be 0), peak RSS of a child, bytes left in the avatar cache (must be 0).

    PYTHONPATH=. python bench/hostile.py [--quick]   # --quick leaves out the decompression bombs
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    cache = work / "cache"
    os.environ.update(
        AVATAR_STORE_URI=(work / "store").as_uri(),
        AVATAR_LOCAL_PATH=str(cache),
        WEIGHTS_DIR=str(work / "weights"),
        ALLOW_FILE_URIS="1",
    )
    import handlers
    from tests.storage.avatar_hostile import address_space_now, all_cases, bytes_under, run_case

    runtime = handlers.worker_runtime()
    handlers.load_engines(runtime, handlers.WORK_TASKS)  # loaded once; children inherit them
    parent_vsz = address_space_now()
    if parent_vsz > ADDRESS_SPACE // 2:
        raise SystemExit(f"the parent already maps {parent_vsz >> 20} MiB: a 2 GiB child cap would test nothing")
    cases = all_cases(big=not args.quick)
    clean = crashes = 0
    peak_rss = 0.0
    started = time.perf_counter()
    print(f"{'case':38} {'attack':7} {'result':22} {'rss MB':>7}  cache bytes")
    for case in cases:
        outcome = run_case(case, work, runtime, ADDRESS_SPACE, FILE_SIZE)
        left = bytes_under(cache)
        crashes += outcome.crashed
        ok = outcome.code in case.expected
        clean += ok
        peak_rss = max(peak_rss, outcome.peak_rss_mb)
        result = f"CRASH ({outcome.exit_status})" if outcome.crashed else outcome.code
        mark = "" if ok else f"   <- expected {'/'.join(sorted(case.expected))}"
        print(f"{case.name:38} {case.attack:7} {result:22} {outcome.peak_rss_mb:7.0f}  {left}{mark}")
    left = bytes_under(cache)
    print(
        f"\ncases {len(cases)}, clean refusals {clean}, crashes {crashes}, "
        f"peak RSS {peak_rss:.0f} MB (parent at fork {parent_vsz >> 20} MiB mapped), "
        f"bytes left in the cache {left}, {time.perf_counter() - started:.1f} s"
    )
    return 0 if crashes == 0 and clean == len(cases) and left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
