"""Modal app: the three tasks and health as methods of one GPU worker class, a weights Volume, a CLI.

    modal deploy modal_app.py                      # the orchestrator then calls modal:talking-head/Worker
    modal run modal_app.py::fill_weights --names wav2lip256
    modal run modal_app.py --task generate_video --avatar-id a1 --text "Hello" --store s3://bucket

Every method calls ``handlers.dispatch`` with the task contract's fields and returns its result dict
(``{"error", "error_code"}`` for refused input). Configuration is read once below from
``MODAL_WORKER_*`` variables on the deploying machine and copied into the image's environment, so
the container rebuilds the same app definition; the tasks' own settings (AVATAR_STORE_URI, S3_* /
GCS_* credentials, WORKER_TASKS) come from the Modal Secrets named in MODAL_WORKER_SECRETS.
Importing this module loads no engine and needs no Modal token; ``Worker().health.local()`` runs a
task in-process.

``LiveWorker`` serves live sessions (``live_session``, ``realtime`` extra): a class of its own because a
session's call lasts as long as the session (its ``timeout`` is ``MODAL_WORKER_LIVE_TIMEOUT_S``, above the
sessions' ``max_duration_s``), and ``@modal.concurrent(max_inputs=MODAL_WORKER_LIVE_SESSIONS)`` lets one
container hold several sessions, each call on a thread of its own, sharing the container's engines. The
orchestrator addresses it as ``modal:<app_name>/LiveWorker`` (method ``live_session``); the sessions'
ICE servers must include a TURN server, since a Modal container accepts no inbound connection.

``generate_video_stream`` is a generator method: with ``stream=True`` it yields one small item per
segment stored (``{"index", "uri", "url", "duration_s", "playlist_uri", "timings_ms"}``), then the
usual result; call it with ``.remote_gen(...)`` (``for item in ...``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

import handlers
import realtime
from errors import error_body
from handlers.logs import configure_logging
from handlers.runtime import WorkerRuntime
from handlers.schemas import DEFAULT_USER_ID, LIVE_SESSION_TASK, URI_SCHEMES, TaskName
from handlers.settings import Settings
from storage import StorageError, open_store

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent
PROJECT_PACKAGES = ("errors", "handlers", "engines", "storage", "realtime")
SOURCE_IGNORE = ["**/__pycache__/**", "**/*.pyc"]  # keep non-Python files (engine data tables) in the image
PYTHON_VERSION = "3.11"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
WEIGHTS_MOUNT = "/weights"
ENV_PREFIX = "MODAL_WORKER_"
# Downloading hundreds of MB of checkpoints (with resumed retries) can take a while on a slow mirror.
FILL_WEIGHTS_TIMEOUT_S = 3600


class ModalConfig(BaseSettings):
    """Deployment settings of the Modal worker (env ``MODAL_WORKER_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # The orchestrator addresses the worker as `modal:<app_name>/Worker`.
    app_name: str = "talking-head"
    # L4 (24 GB): room for the Wav2Lip engines' batches at a low hourly price; "" runs the CPU engines only.
    gpu: str = "L4"
    # One call may preprocess a 5-minute training video (MAX_VIDEO_SECONDS) from a cold cache.
    timeout_s: int = Field(1800, ge=10)
    # Engine loading (weights read from the Volume on a fresh container) gets its own budget, not the call's.
    startup_timeout_s: int = Field(600, ge=10)
    # Live sessions: one call lasts the whole session, so its limit covers the longest session (REALTIME_MAX_DURATION_S,
    # 3600 by default) plus set-up; one container holds this many sessions at once (REALTIME_MAX_SESSIONS).
    live_timeout_s: int = Field(3900, ge=60, le=86400)
    live_sessions: int = Field(4, ge=1, le=64)
    # Keeps a container warm across one user's avatar -> video -> emotions burst without paying idle hours.
    scaledown_window_s: int = Field(300, ge=2)
    # Modal's CPU memory snapshot: a container restores the imports and the CPU engines (face analyzer, eSpeak,
    # viseme_warp, landmark_warp) instead of loading them; the neural engines load after the restore, once the
    # GPU is attached (handlers.warmup). Off until a deployment has checked that its engines restore correctly.
    memory_snapshot: bool = False
    # Modal's GPU memory snapshot (alpha; needs memory_snapshot and a GPU): the neural engines load before the
    # snapshot, on the GPU, and are restored with it, so a container starts with nothing left to load.
    gpu_snapshot: bool = False
    # Weights are fetched once into this Volume by `fill_weights`, never on the serving path.
    weights_volume: str = "talking-head-weights"
    # Modal Secrets (comma list) holding AVATAR_STORE_URI and the S3_* / GCS_* credentials the tasks need.
    secrets: str = ""
    # The torch build baked into the image: CUDA wheels with a GPU, the far smaller CPU wheels without.
    torch_version: str = "2.13.0"
    cuda_torch_index: str = "https://download.pytorch.org/whl/cu128"

    @property
    def torch_index(self) -> str:
        return self.cuda_torch_index if self.gpu else CPU_TORCH_INDEX

    def as_env(self) -> dict[str, str]:
        """This config as environment variables, so the container reads back the same values."""
        return {f"{ENV_PREFIX}{name.upper()}": str(value) for name, value in self.model_dump().items()}


CONFIG = ModalConfig()

app = modal.App(CONFIG.app_name)

worker_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    # No apt packages: OpenCV (headless), PyAV (FFmpeg), dlib and eSpeak NG all ship their native code in wheels.
    .pip_install(f"torch=={CONFIG.torch_version}", index_url=CONFIG.torch_index)
    .pip_install_from_pyproject(str(PROJECT_ROOT / "pyproject.toml"), optional_dependencies=["realtime"])
    .env({"WEIGHTS_DIR": WEIGHTS_MOUNT, "ALLOW_FILE_URIS": "0", "TALKING_HEAD_WORKER": "1", **CONFIG.as_env()})
    .add_local_python_source(*PROJECT_PACKAGES, ignore=SOURCE_IGNORE)
)

weights_volume = modal.Volume.from_name(CONFIG.weights_volume, create_if_missing=True)
worker_secrets = [modal.Secret.from_name(name.strip()) for name in CONFIG.secrets.split(",") if name.strip()]
# GPU memory is only captured in a snapshot through Modal's (experimental) GPU snapshot option.
GPU_SNAPSHOT = bool(CONFIG.gpu_snapshot and CONFIG.memory_snapshot and CONFIG.gpu)
snapshot_options = {"enable_gpu_snapshot": True} if GPU_SNAPSHOT else {}


def unhealthy(load_errors: dict[str, str]) -> dict[str, Any]:
    """Refuse the call and, in a Modal container, take no more inputs so a fresh container replaces this one."""
    if not modal.is_local():
        modal.experimental.stop_fetching_inputs()
    details = "; ".join(f"{task}: {error}" for task, error in load_errors.items())
    message = f"This worker failed to load its engines ({details}); it will be replaced."
    return error_body("worker_unhealthy", message)


@app.cls(
    image=worker_image,
    gpu=CONFIG.gpu or None,
    volumes={WEIGHTS_MOUNT: weights_volume},
    secrets=worker_secrets,
    timeout=CONFIG.timeout_s,
    startup_timeout=CONFIG.startup_timeout_s,
    scaledown_window=CONFIG.scaledown_window_s,
    enable_memory_snapshot=CONFIG.memory_snapshot,
    experimental_options=snapshot_options,
)
class Worker:
    """One container: engines loaded once in `load`, then one method call per task."""

    @modal.enter(snap=CONFIG.memory_snapshot)  # Modal refuses snap=True on a class without snapshots
    def prepare(self) -> None:
        """Before a memory snapshot (with snapshots off: first at start, hooks run in this order): what needs no
        GPU; everything, GPU included, with the GPU snapshot."""
        from handlers.warmup import load_cpu_part  # the engines' modules: imported in containers only

        configure_logging()
        self.runtime = WorkerRuntime.from_env()
        self.load_errors: dict[str, str] = {}
        self._record(handlers.load_engines(self.runtime) if GPU_SNAPSHOT else load_cpu_part(self.runtime))

    @modal.enter(snap=False)
    def load(self) -> None:
        """In every started container, after a restore: the neural engines, on the GPU now attached."""
        if not GPU_SNAPSHOT:
            self._record(handlers.load_engines(self.runtime))

    def _record(self, status: dict[str, str]) -> None:
        self.load_errors |= {task: s for task, s in status.items() if s != "ok"}
        if self.load_errors:
            log.error("worker unhealthy, engines failed to load: %s", self.load_errors)

    def _run(self, task: TaskName, fields: dict[str, Any]) -> dict[str, Any]:
        if self.load_errors:
            return self._unhealthy()
        return handlers.dispatch({**fields, "task": task.value}, self.runtime)

    def _unhealthy(self) -> dict[str, Any]:
        return unhealthy(self.load_errors)

    @modal.method()
    def preprocess_avatar(self, **fields: Any) -> dict[str, Any]:
        return self._run(TaskName.preprocess_avatar, fields)

    @modal.method()
    def generate_video(self, **fields: Any) -> dict[str, Any]:
        return self._run(TaskName.generate_video, fields)

    @modal.method()
    def generate_video_stream(self, **fields: Any) -> Iterator[dict[str, Any]]:
        """generate_video as a sequence: an item per stored segment (``stream=True``), then the result."""
        if self.load_errors:
            yield self._unhealthy()
            return
        yield from handlers.dispatch_stream({**fields, "task": TaskName.generate_video.value}, self.runtime)

    @modal.method()
    def render_emotion(self, **fields: Any) -> dict[str, Any]:
        return self._run(TaskName.render_emotion, fields)

    @modal.method()
    def health(self, **fields: Any) -> dict[str, Any]:
        return self._run(TaskName.health, fields)


@app.cls(
    image=worker_image,
    gpu=CONFIG.gpu or None,
    volumes={WEIGHTS_MOUNT: weights_volume},
    secrets=worker_secrets,
    timeout=CONFIG.live_timeout_s,
    startup_timeout=CONFIG.startup_timeout_s,
    scaledown_window=CONFIG.scaledown_window_s,
)
@modal.concurrent(max_inputs=CONFIG.live_sessions)
class LiveWorker:
    """Live sessions: several per container (threads), the engines loaded once in `load`."""

    @modal.enter()
    def load(self) -> None:
        from realtime.limits import RealtimeSettings

        configure_logging()
        self.load_errors: dict[str, str] = {}
        if not realtime.serve_live_sessions(RealtimeSettings(max_sessions=CONFIG.live_sessions)):
            self.load_errors = {LIVE_SESSION_TASK: handlers.unavailable_reason(LIVE_SESSION_TASK)}
            return
        self.runtime = WorkerRuntime.build(Settings(worker_tasks=LIVE_SESSION_TASK))
        status = handlers.load_engines(self.runtime)
        self.load_errors = {task: s for task, s in status.items() if s != "ok"}

    @modal.method()
    def live_session(self, **fields: Any) -> dict[str, Any]:
        """One session, from its offer to its end: the LiveSessionResult, or ``{"error", "error_code"}``."""
        if self.load_errors:
            return unhealthy(self.load_errors)
        return handlers.dispatch({**fields, "task": LIVE_SESSION_TASK}, self.runtime)


@app.function(image=worker_image, volumes={WEIGHTS_MOUNT: weights_volume}, timeout=FILL_WEIGHTS_TIMEOUT_S)
def fill_weights(names: str = "wav2lip256", base_url: str = "") -> None:
    """Download weights (comma list of `fetch-weights` names) into the Volume, checksums verified.

    Files already in the Volume and verified are kept; `base_url` points at a mirror holding the files.
    """
    from engines.weights import fetch_weights  # engines are imported only inside Modal containers

    wanted = [name.strip() for name in names.split(",") if name.strip()]
    for path in fetch_weights(wanted, Path(WEIGHTS_MOUNT), base_url=base_url or None, show_progress=False):
        log.info("weights ready: %s", path)
    weights_volume.commit()


# ---- the local command line: `modal run modal_app.py --task ...` ------------------------------


class InputError(ValueError):
    """A command-line input that is neither a URI nor an existing local file, or a file with nowhere to go."""


def task_fields(task: str, user_id: str, **inputs: str) -> dict[str, Any]:
    """The contract fields given on the command line (empty ones left out; health takes no user)."""
    fields: dict[str, Any] = {name: value for name, value in inputs.items() if value}
    if task != TaskName.health.value:
        fields["user_id"] = user_id
    return fields


def stage_local_files(fields: dict[str, Any], store_uri: str, user_id: str) -> dict[str, Any]:
    """Upload the inputs given as local files to the store and replace them by their URIs."""
    from orchestrator.core.uploads import INPUT_FIELD_KINDS, upload_file  # laptop side only: not in the worker image

    staged = dict(fields)
    for field, kind in INPUT_FIELD_KINDS.items():
        value = fields.get(field)
        if not value or value.startswith(URI_SCHEMES):
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise InputError(f"`--{field}` {value!r} is neither a URI ({', '.join(URI_SCHEMES)}) nor a file.")
        if not store_uri.startswith(("s3://", "gs://")):
            raise InputError(f"`--{field}` is a local file: give `--store s3://...` or `gs://...` the worker can read.")
        settings = Settings()
        staged[field] = upload_file(open_store(store_uri), path, kind=kind, user_id=user_id, settings=settings).uri
    return staged


@app.local_entrypoint()
def main(
    task: str,
    avatar_id: str = "",
    text: str = "",
    video: str = "",
    image: str = "",
    audio: str = "",
    emotion: str = "",
    user_id: str = DEFAULT_USER_ID,
    store: str = "",
    stream: bool = False,
) -> None:
    """Run one task on the deployed worker and print its result as JSON (``--stream``: generate_video's
    segment items as they are stored, one JSON line each, then the result)."""
    configure_logging()
    inputs = {"avatar_id": avatar_id, "text": text, "video": video, "image": image, "audio": audio}
    fields = task_fields(task, user_id, emotion=emotion, store=store, **inputs)
    if stream:
        fields["stream"] = True  # generate_video only: any other task refuses the field below
    try:
        fields = stage_local_files(fields, store, user_id)
        handlers.parse({"task": task, **fields})  # refuse bad input here, before starting a container
    except (InputError, StorageError, handlers.TaskError) as exc:
        raise SystemExit(f"error ({getattr(exc, 'code', 'invalid_input')}): {exc}") from None
    if stream:
        for result in Worker().generate_video_stream.remote_gen(**fields):
            print(json.dumps(result))
    else:
        result = getattr(Worker(), task).remote(**fields)
        print(json.dumps(result, indent=2))
    if "error_code" in result:
        raise SystemExit(1)
