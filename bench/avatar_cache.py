"""What revalidating cached avatars costs a render: ``AvatarCache.acquire`` of a cached avatar on moto S3.

Three paths, timed round-robin (median of ``--runs`` rounds of ``--calls`` acquires each):
  cached      AVATAR_REVALIDATE_S far away: no store request (the baseline)
  revalidate  AVATAR_REVALIDATE_S=0: one HEAD per acquire, the TAR unchanged
  replaced    the TAR replaced before every acquire: HEAD, download, unpack, install (what a re-preprocess costs
              the next render on another worker; the upload itself is not timed)

    python bench/avatar_cache.py [--runs 5] [--calls 20] [--frames 25]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

BUCKET = "bench-avatar-cache"


def _start_moto() -> object:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        S3_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    server = _start_moto()
    import boto3

    from storage import open_store
    from storage.avatar.archive import pack_avatar
    from storage.avatar.cache import AvatarCache
    from storage.keys import avatar_key
    from tests.storage.avatar_factory import make_avatar_dir

    boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    store = open_store(f"s3://{BUCKET}")
    work = Path(tempfile.mkdtemp(prefix="bench-avatar-cache-"))
    tars = [work / f"{frames}.tar" for frames in (args.frames, args.frames + 1)]  # two TARs to alternate
    for tar in tars:
        pack_avatar(make_avatar_dir(work / tar.stem, "av", frames=int(tar.stem)), tar)
    store.put(tars[0], avatar_key("u1", "av"))
    cache = AvatarCache(work / "cache")
    replaced = [0]

    def acquire(revalidate_s: float) -> None:
        cache.revalidate_s = revalidate_s
        with cache.acquire(store, "u1", "av"):
            pass

    def replace_then_acquire() -> float:
        replaced[0] += 1
        store.put(tars[replaced[0] % 2], avatar_key("u1", "av"))
        started = time.perf_counter()
        acquire(0)
        return time.perf_counter() - started

    paths: dict[str, Callable[[], float]] = {
        "cached": lambda: _timed(lambda: acquire(1e9)),
        "revalidate": lambda: _timed(lambda: acquire(0)),
        "replaced": replace_then_acquire,
    }
    acquire(0)  # warm: the first download
    rounds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.runs):
        for name, path in paths.items():
            rounds[name].append(statistics.median(path() for _ in range(args.calls)) * 1000)
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    print(f"AvatarCache.acquire of a cached {args.frames}-frame avatar on moto S3 (median of {args.runs}x{args.calls})")
    for name, ms in medians.items():
        print(f"  {name:<10} {ms:8.2f} ms   (+{ms - medians['cached']:.2f} ms over cached)")
    server.stop()


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
