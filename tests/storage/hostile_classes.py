"""The hostile corpus by attack class, for bench/hostile.py (``--only CLASS``) and the tests.

A class is one function registered with ``@hostile_class(name, description)``: it gets the ``Corpus`` (work
folder, worker runtime, child limits) and returns a ``ClassReport`` (cases, clean refusals, crashes, peak RSS
of a child, bytes left in the avatar cache, leaks, and figures of its own). Case-based classes build
``Case``s (a payload through ``handlers.dispatch``) or ``CallCase``s (any call) and hand them to ``run_cases``,
which runs each in a forked child under RLIMIT_AS / RLIMIT_FSIZE. A new class (SDPs, session floods) is one
more function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from handlers.runtime import WorkerRuntime
from tests.storage.avatar_hostile import (
    Case,
    Outcome,
    _tar_bytes,
    _tar_case,
    _with_coords,
    _write_face,
    bytes_under,
    hostile_media,
    hostile_tars,
    run_case,
    run_isolated,
)
from tests.storage.http_servers import QuietHandler, serving
from tests.storage.pickle_bombs import build_bombs, work_bombs
from tests.storage.uri_attacks import escapes


@dataclass
class Corpus:
    work: Path
    runtime: WorkerRuntime
    address_space: int
    file_size: int
    big: bool = True  # the decompression bombs (seconds to build)

    @property
    def cache(self) -> Path:
        return self.runtime.settings.avatar_local_path


@dataclass(frozen=True)
class CallCase:
    """A case that is a call: ``call(work)`` returns ``ok`` or raises StorageError (its code is the outcome)."""

    name: str
    attack: str
    expected: frozenset[str]
    call: Callable[[Path], str]


@dataclass
class ClassReport:
    name: str
    cases: int = 0
    refused: int = 0  # ended as one of their expected codes
    crashes: int = 0  # a child that died
    peak_rss_mb: float = 0.0
    bytes_left: int = 0  # in the avatar cache after the class
    leaks: int = 0  # resources not given back (stream slots, ...)
    figures: dict[str, str] = field(default_factory=dict)
    rows: list[str] = field(default_factory=list)  # one line per case, for the bench's table
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.crashes and self.refused == self.cases and not self.bytes_left and not self.leaks


CLASSES: dict[str, tuple[str, Callable[[Corpus], ClassReport]]] = {}


def hostile_class(name: str, description: str) -> Callable[[Callable[[Corpus], ClassReport]], Callable]:
    def register(run: Callable[[Corpus], ClassReport]) -> Callable[[Corpus], ClassReport]:
        CLASSES[name] = (description, run)
        return run

    return register


def run_cases(
    corpus: Corpus, name: str, cases: list[Case | CallCase], runtime: WorkerRuntime | None = None
) -> ClassReport:
    """Each case in a capped child; the report tallies outcomes against the expected codes."""
    report = ClassReport(name)
    for case in cases:
        if isinstance(case, CallCase):
            outcome = run_isolated(
                lambda case=case: case.call(corpus.work), address_space=corpus.address_space, file_size=corpus.file_size
            )
        else:
            outcome = run_case(case, corpus.work, runtime or corpus.runtime, corpus.address_space, corpus.file_size)
        _tally(report, case, outcome, bytes_under(corpus.cache))
    report.bytes_left = bytes_under(corpus.cache)
    return report


def _tally(report: ClassReport, case: Case | CallCase, outcome: Outcome, left: int) -> None:
    report.cases += 1
    report.crashes += outcome.crashed
    report.peak_rss_mb = max(report.peak_rss_mb, outcome.peak_rss_mb)
    result = f"CRASH ({outcome.exit_status})" if outcome.crashed else str(outcome.code)
    if outcome.code in case.expected:
        report.refused += 1
        mark = ""
    else:
        mark = f"   <- expected {'/'.join(sorted(case.expected))}"
        report.unexpected.append(f"{case.name}: {result}")
    report.rows.append(f"{case.name[:44]:44} {case.attack:8} {result[:24]:24} {outcome.peak_rss_mb:7.0f}  {left}{mark}")


# ---- classes ----------------------------------------------------------------------------------------


@hostile_class("tars", "avatar TARs: traversal, links, devices, bombs, header bombs, bad meta and frames")
def tar_class(corpus: Corpus) -> ClassReport:
    return run_cases(corpus, "tars", [c for c in hostile_tars(corpus.big) if c.attack == "tar"])


@hostile_class("pickles", "coords.pkl: code-running reduces, native-crash shapes, decode, build and work bombs")
def pickle_class(corpus: Corpus) -> ClassReport:
    cases: list[Case | CallCase] = [c for c in hostile_tars(big=False) if c.attack == "pickle"]
    for name, data in {**build_bombs(), **work_bombs()}.items():
        cases.append(_tar_case(f"pickle_{name}", "pickle", {"invalid_avatar"}, _with_coords(data)))
    return run_cases(corpus, "pickles", cases)


@hostile_class("media", "malformed videos, images and audio through the tasks")
def media_class(corpus: Corpus) -> ClassReport:
    return run_cases(corpus, "media", list(hostile_media()))


@hostile_class("tensors", "latents.pt: zero and overlapping strides, references, storage lies, compression, legacy")
def tensor_class(corpus: Corpus) -> ClassReport:
    from tests.storage.tensor_bombs import hostile_latents

    cases: list[Case | CallCase] = [
        _tar_case(f"latents_{name}", "tensor", {"invalid_avatar"}, _musetalk_tar(write))
        for name, write in hostile_latents().items()
    ]
    return run_cases(corpus, "tensors", cases)


def _musetalk_tar(write_latents: Callable[[Path], None]) -> Callable[[], bytes]:
    """A LiveTalking musetalk avatar (3 frames) whose latents.pt is the hostile one, as TAR bytes."""

    def build() -> bytes:
        import tempfile

        from tests.storage.test_avatar_musetalk import livetalking_musetalk_dir

        with tempfile.TemporaryDirectory(prefix="hostile-musetalk-") as tmp:
            avatar = livetalking_musetalk_dir(Path(tmp))
            write_latents(avatar / "latents.pt")
            entries = [
                (f"av/{path.relative_to(avatar).as_posix()}", path.read_bytes(), {})
                for path in sorted(avatar.rglob("*"))
                if path.is_file()
            ]
        return _tar_bytes(entries)

    return build


@hostile_class("uris", "dotted, encoded and backslashed paths on every scheme, redirect hops, another user's folder")
def uri_class(corpus: Corpus) -> ClassReport:
    store = corpus.runtime.settings.avatar_store_uri
    own = f"{store}/uploads/attacker/"
    _place(corpus, "uploads/victim/secret.png")
    cases: list[Case | CallCase] = []
    for field_name, task in (("image", "render_emotion"), ("video", "preprocess_avatar"), ("audio", "generate_video")):
        for shape, uri in escapes(own, "victim", "secret.png").items():
            cases.append(_payload_case(f"{field_name}_{shape}", {"task": task, field_name: uri}))
    for shape, uri in escapes(f"{store}/", "elsewhere", "").items():
        cases.append(_payload_case(f"store_{shape}", {"task": "render_emotion", "image": "data:,x", "store": uri}))
    for scheme in ("s3://bucket", "gs://bucket", "file:///srv/store", "https://cdn.example.com"):
        for shape, uri in escapes(f"{scheme}/uploads/attacker/", "victim", "secret.png").items():
            cases.append(_api_case(f"api_{scheme.split(':')[0]}_{shape}", uri))
    report = run_cases(corpus, "uris", cases)
    with serving(_Redirects) as url:
        settings = corpus.runtime.settings
        storage = settings.storage.model_copy(
            update={"allow_private_urls": True, "allowed_input_prefixes": f"{url}/ok/"}
        )
        runtime = corpus.runtime.with_settings(settings.model_copy(update={"storage": storage}))
        hops = [
            _payload_case(f"redirect_{hop}", {"task": "render_emotion", "image": f"{url}/ok/{hop}"})
            for hop in REDIRECTS
        ]
        _merge(report, run_cases(corpus, "uris", hops, runtime))
    return report


def _place(corpus: Corpus, key: str) -> None:
    from storage.local import path_from_file_uri

    path = path_from_file_uri(corpus.runtime.settings.avatar_store_uri) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n a victim's upload")


def _payload_case(name: str, fields: dict) -> Case:
    payload = {"user_id": "attacker", **fields}
    if fields["task"] == "render_emotion":
        payload["emotion"] = "happy"
    elif fields["task"] == "preprocess_avatar":
        payload["avatar_id"] = "a1"

    def make(work: Path) -> dict:  # generate_video reads its portrait before its audio: give it a real one
        if payload["task"] != "generate_video":
            return payload
        (work / "inputs").mkdir(parents=True, exist_ok=True)
        return {**payload, "image": _write_face(work)}

    return Case(name, "uri", frozenset({"url_refused"}), make)


def _api_case(name: str, uri: str) -> CallCase:
    """The API's rule for a tenant (``check_request_inputs``) on one input URI."""

    def call(_work: Path) -> str:
        from handlers.errors import TaskError
        from handlers.settings import Settings
        from orchestrator.core.config import OrchestratorSettings
        from orchestrator.core.input_policy import check_request_inputs

        try:
            body = {"user_id": "attacker", "image": uri}
            check_request_inputs(
                body, OrchestratorSettings(database_url="sqlite://"), Settings(), owners=frozenset({"attacker"})
            )
        except TaskError as exc:
            return exc.code
        return "ok"

    return CallCase(name, "uri", frozenset({"url_refused"}), call)


REDIRECTS = {
    "to-dotted": "/ok/../secret.png",
    "to-encoded": "/ok/%2e%2e/secret.png",
    "to-relative": "../secret.png",
    "to-backslash": "/ok/..\\secret.png",
    "to-encoded-slash": "/ok/..%2fsecret.png",
    "to-outside": "/secret.png",
}


class _Redirects(QuietHandler):
    def do_GET(self) -> None:
        target = REDIRECTS.get(self.path.rsplit("/", 1)[-1])
        self._send(302 if target else 404, b"", {"Location": target or "", "Content-Length": "0"})


def _merge(into: ClassReport, other: ClassReport) -> None:
    into.cases += other.cases
    into.refused += other.refused
    into.crashes += other.crashes
    into.peak_rss_mb = max(into.peak_rss_mb, other.peak_rss_mb)
    into.bytes_left = max(into.bytes_left, other.bytes_left)
    into.rows += other.rows
    into.unexpected += other.unexpected


@hostile_class("streams", "event-stream flood: 100 open streams on a queued job, a tenant over its cap")
def stream_flood_class(corpus: Corpus) -> ClassReport:
    from tests.orchestrator.stream_flood import run_stream_flood

    flood = run_stream_flood(corpus.work / "streams")
    report = ClassReport("streams", cases=flood.attempted, refused=flood.as_expected, leaks=flood.leaks)
    report.crashes = len(flood.errors)
    report.unexpected += flood.errors[:10]
    report.figures = {
        "health p95 ms": f"{flood.health_p95_ms:.0f}",
        "GET /v1/jobs p95 ms": f"{flood.jobs_p95_ms:.0f}",
        "slots left": str(flood.leaks),
    }
    report.rows.append(
        f"{'100 streams + a tenant over its cap':44} {'flood':8} {flood.as_expected}/{flood.attempted} as expected"
        f"   /healthz p95 {flood.health_p95_ms:.0f} ms, GET /v1/jobs p95 {flood.jobs_p95_ms:.0f} ms, "
        f"slots left {flood.leaks}"
    )
    return report


@hostile_class("sdps", "live-session offers: oversized, many m-lines, malformed, random bytes, a candidate flood")
def sdp_class(corpus: Corpus) -> ClassReport:
    return _live_class(corpus, "sdps")


@hostile_class("sessions", "live-session floods: data-channel floods, huge and nested messages, say floods, a fast mic")
def session_flood_class(corpus: Corpus) -> ClassReport:
    return _live_class(corpus, "sessions")


def _live_class(corpus: Corpus, name: str) -> ClassReport:
    """Against a RunPod worker holding live sessions (tests/realtime/hostile_sessions.py)."""
    from tests.realtime.hostile_sessions import run_live_class

    live = run_live_class(name, corpus.work / name)
    report = ClassReport(name, cases=live.cases, refused=live.clean, crashes=int(live.crashed), leaks=live.held)
    report.peak_rss_mb, report.rows, report.unexpected = live.peak_rss_mb, live.rows, live.unexpected
    report.figures = {"worker threads above the start": str(live.extra_threads)}
    return report
