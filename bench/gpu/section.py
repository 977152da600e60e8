"""One section of the GPU run in its own process (the runner time-boxes it and survives its failure):

    python -m bench.gpu.section KIND --profile gpu|cpu --work DIR --result FILE [--engine NAME] [--box-s S]

KIND: ``weights`` (write every engine's random weights), ``engine`` (cold start, figures, end to end) or
``compile`` (one engine each). The result is written as JSON to FILE; an exception ends the process with its
message on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.gpu.profiles import PROFILES  # noqa: E402
from bench.gpu.worker import Work  # noqa: E402

KINDS = ("weights", "engine", "compile")
Saver = Callable[[dict], None]


def run_section(
    kind: str, engine: str | None, work: Work, profile_name: str, box_s: float, spawned_at: float, save: Saver
) -> dict:
    profile = PROFILES[profile_name]
    deadline = time.monotonic() + box_s - 5.0
    if kind == "weights":
        from bench.gpu.weights import write_all

        return write_all(work.weights, profile)
    assert engine is not None, "the engine sections need --engine"
    from bench.gpu.weights import wait_ready

    wait_ready(work.weights, engine, max(1.0, deadline - time.monotonic()))
    if kind == "engine":
        from bench.gpu import engine_bench

        return engine_bench.run(engine, work, profile, deadline, spawned_at, save)
    from bench.gpu import compiled

    return compiled.run(engine, work, profile)


def main() -> None:
    spawned_at = time.time()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--profile", choices=sorted(PROFILES), required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--engine")
    parser.add_argument("--box-s", type=float, default=600.0)
    parser.add_argument("--spawned-at", type=float, default=None, help="the runner's time.time() at the spawn")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work, started = Work(args.work), args.spawned_at or spawned_at

    def save(result: dict) -> None:  # also partial results, so a section stopped at its box keeps its figures
        args.result.write_text(json.dumps(result, indent=1, default=str))

    save(run_section(args.kind, args.engine, work, args.profile, args.box_s, started, save))


if __name__ == "__main__":
    main()
