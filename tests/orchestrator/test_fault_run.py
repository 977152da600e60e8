"""A short version of bench/faults.py: three replicas on PostgreSQL, the RunPod emulator and moto S3, with the
same faults (kill -9 of a replica, a worker dying mid-job, S3 down for 5 s, a cut database connection,
duplicated and out-of-order webhooks), fewer jobs, the same zero assertions."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from tests.orchestrator.conftest import postgres_url

BENCH = Path(__file__).resolve().parents[2] / "bench" / "faults.py"
JOBS = 18
LEASE_S = 3.0


def load_bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_faults", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.postgres
@pytest.mark.slow
def test_replicas_lose_no_job_under_faults(monkeypatch, tmp_path):
    if postgres_url() is None:
        pytest.skip("DATABASE_URL does not point at PostgreSQL")
    monkeypatch.chdir(tmp_path)
    faults = load_bench(monkeypatch)
    with faults.stack(LEASE_S) as stack:
        report = faults.run(stack, JOBS, faults=True)
    assert (report.lost, report.submitted_twice, report.not_terminal) == (0, 0, 0), report
    assert report.changed_by_webhooks == 0, report
    assert sum(report.statuses.values()) == JOBS and report.statuses.get("completed", 0) > 0, report
    # the dead replica's jobs were taken over within the lease time (plus a poll round and a claim)
    assert report.takeover_s is not None and (math.isnan(report.takeover_s) or report.takeover_s < LEASE_S + 3)
