"""Prometheus metrics of the HTTP API, each app with its own ``CollectorRegistry``.

- ``avatarctl_http_requests_total{method, route, status}``: requests answered;
- ``avatarctl_http_request_duration_seconds{method, route}``: latency histogram;
- ``avatarctl_http_errors_total{route, error_code}``: answers with status >= 400, by error code;
- ``avatarctl_submissions_total{task, backend}``: job submissions accepted (idempotent replays included);
- ``avatarctl_jobs{task, status}``: jobs in the database, read at scrape time;
- live sessions: ``avatarctl_live_sessions{status}`` (in the database, at scrape time),
  ``avatarctl_live_sessions_created_total{backend}``, ``avatarctl_live_sessions_ended_total{reason, error_code}``
  (ended by this replica), ``avatarctl_live_session_answer_seconds`` (create to the worker's answer),
  ``avatarctl_live_say_seconds`` (``/say`` to the worker's ``said``);
- ``avatarctl_leases_held{replica}``, ``avatarctl_lease_acquisitions_total{replica}`` (jobs this replica took
  from no one or from another replica), ``avatarctl_lease_takeovers_total{replica}`` (of those, jobs whose
  replica's lease had expired), ``avatarctl_replica_heartbeat_failures_total{replica}``.

Seed 004's names, for the LivePortrait service's dashboards, over its routes (``/render``, ``/render/batch``,
``/output/{filename}``, ``/health``): ``liveportrait_requests_total{endpoint, status}``,
``liveportrait_request_duration_seconds{endpoint}``, ``liveportrait_errors_total{endpoint, error_code}``.

``route`` is the route template (``/v1/jobs/{job_id}``), never the raw path, so ids do not explode
the label space; requests that match no route count as ``unmatched``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from handlers.schemas import TaskName
from orchestrator.core.models import JobStatus

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UNMATCHED_ROUTE = "unmatched"
JOB_LABELS = ["task", "status"]
ERROR_CODE_STATE = "avatarctl_error_code"  # key in the ASGI scope's state where error handlers leave their code

SESSION_STATUSES = ("starting", "live", "ended")
SEED_METRIC_ROUTES = frozenset({"/render", "/render/batch", "/output/{filename}", "/health"})

JobCounts = Callable[[], dict[tuple[str, str], int]]


class JobsCollector(Collector):
    """``avatarctl_jobs{task, status}`` from the job store at scrape time (zeros included)."""

    def __init__(self, counts: JobCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("avatarctl_jobs", "Jobs in the database by task and status.", labels=JOB_LABELS)
        try:
            counts = self._counts()
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("job counts unavailable for /metrics: %s", exc)
            return
        tasks = sorted({t.value for t in TaskName} | {task for task, _ in counts})
        for task in tasks:
            for status in JobStatus:
                gauge.add_metric([task, status.value], counts.get((task, status.value), 0))
        yield gauge


class LeaseCollector(Collector):
    """This replica's lease gauge and counters (``Replica.stats``) at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats()
        replica = [str(stats["replica"])]
        held = GaugeMetricFamily("avatarctl_leases_held", "Active jobs this replica holds.", labels=["replica"])
        held.add_metric(replica, stats["held"])
        yield held
        for name, key, doc in LEASE_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["replica"])
            counter.add_metric(replica, stats[key])
            yield counter


class SessionsCollector(Collector):
    """``avatarctl_live_sessions{status}`` from the session table at scrape time (zeros included)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("avatarctl_live_sessions", "Live sessions by status.", labels=["status"])
        try:
            counts = self._counts()
        except Exception as exc:
            log.warning("session counts unavailable for /metrics: %s", exc)
            return
        for status in SESSION_STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge


class SessionMetrics:
    """The live sessions' counters and latencies (in ``registry``: the API's)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.registry = registry
        self.created = Counter(
            "avatarctl_live_sessions_created_total", "Live sessions started.", ["backend"], registry=registry
        )
        self.ended = Counter(
            "avatarctl_live_sessions_ended_total",
            "Live sessions this replica ended, by reason.",
            ["reason", "error_code"],
            registry=registry,
        )
        self.answer_seconds = Histogram(
            "avatarctl_live_session_answer_seconds",
            "From a create to its worker's SDP answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.say_seconds = Histogram(
            "avatarctl_live_say_seconds", "From /say to the worker's said.", buckets=LATENCY_BUCKETS, registry=registry
        )

    def count_sessions(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(SessionsCollector(counts))


LEASE_COUNTERS = (
    ("avatarctl_lease_acquisitions", "acquired_total", "Jobs this replica took from no one or from another."),
    ("avatarctl_lease_takeovers", "takeovers_total", "Jobs taken over after another replica's lease expired."),
    ("avatarctl_replica_heartbeat_failures", "beat_failures_total", "Heartbeats that failed (database errors)."),
)


class ApiMetrics:
    """The metrics of one API app (recorded by ``MetricsMiddleware``)."""

    def __init__(
        self, job_counts: JobCounts | None = None, lease_stats: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "avatarctl_http_requests_total",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "avatarctl_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "avatarctl_http_errors_total",
            "HTTP answers with status >= 400, by error code.",
            ["route", "error_code"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "avatarctl_submissions_total",
            "Job submissions accepted through the API (idempotent replays included).",
            ["task", "backend"],
            registry=self.registry,
        )
        self._add_seed_metrics()
        self.sessions = SessionMetrics(self.registry)
        if job_counts is not None:
            self.registry.register(JobsCollector(job_counts))
        if lease_stats is not None:
            self.registry.register(LeaseCollector(lease_stats))

    def _add_seed_metrics(self) -> None:
        self.seed_requests = Counter(
            "liveportrait_requests_total", "Seed 004 route requests.", ["endpoint", "status"], registry=self.registry
        )
        self.seed_latency = Histogram(
            "liveportrait_request_duration_seconds",
            "Latency of seed 004's routes.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.seed_errors = Counter(
            "liveportrait_errors_total", "Seed 004 route errors.", ["endpoint", "error_code"], registry=self.registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float, error_code: str | None) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, error_code or f"http_{status}").inc()
        if route in SEED_METRIC_ROUTES:
            self.seed_requests.labels(route, str(status)).inc()
            self.seed_latency.labels(route).observe(seconds)
            if status >= 400:
                self.seed_errors.labels(route, error_code or f"http_{status}").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware that times and counts every HTTP request into an ``ApiMetrics``."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app is answered 500 by the server error middleware

        async def send_recording(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            error_code = (scope.get("state") or {}).get(ERROR_CODE_STATE)
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started, error_code)
