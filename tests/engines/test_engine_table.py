"""The engine table is the one home of engine names: what is derived from it agrees with it, and a new engine is
one row plus its module (and its files in the weights manifest): the schema, auto's choice, loading, ``health``
and the weights lookups take it up with no other edit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from engines import table, weights
from engines.lipsync import LIPSYNC_ENGINES, register
from handlers import engine_choice
from handlers.errors import TaskError
from handlers.runtime import WorkerRuntime
from handlers.schemas import HOSTED_ENGINES, LIVE_ENGINES, GenerateVideoRequest, LipSyncEngineName
from handlers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FAKE = "fake_lips"
FAKE_MODULE = f'''
from engines.lipsync import register


@register("{FAKE}")
class FakeLips:
    """Shows the avatar's first frame with a grey level taken from the weights file; records its context."""

    version = "0"

    def __init__(self, level, context):
        self.level, self.context = level, context

    @classmethod
    def load(cls, weights, context):
        return cls(weights.read_bytes()[0], context)

    def render(self, avatar, audio):
        for _ in range(audio.num_frames):
            yield avatar.frames[0] * 0 + self.level
'''
FAKE_FILE = weights.WeightsFile(FAKE, "fake/lips.bin", None, None, "Fake (test)", True, "test", "https://x.invalid/l")
FAKE_ROW = table.EngineRow(
    FAKE,
    "fake_lips_engine",
    "neural",
    auto=0,  # first in auto's order
    weights=(FAKE,),
    licence="Fake (test)",
    commercial_use=True,
    precision_setting="wav2lip_precision",
    options=("wav2lip96_checkpoint",),  # any Settings field: shows options reach load by the row
)


def test_the_schema_enum_is_auto_then_the_rows() -> None:
    assert [e.value for e in LipSyncEngineName] == ["auto", *table.names()]
    assert LipSyncEngineName.d_id.value == "d-id"  # member names: the value with `-` as `_`
    assert HOSTED_ENGINES == ("d-id",) and "d-id" not in LIVE_ENGINES
    assert set(LIVE_ENGINES) == {"auto", *(r.name for r in table.rows() if r.kind != "hosted")}


def test_auto_order_ends_with_the_cpu_engine_and_leaves_out_the_hosted_one() -> None:
    order = [r.name for r in table.auto_order()]
    assert order[-1] == table.CPU_ENGINE == "viseme_warp"
    assert "d-id" not in order and len(order) == len(table.rows()) - 1


def test_weights_of_the_rows_are_manifest_files_each_of_one_engine() -> None:
    owners: dict[str, str] = {}
    for row in table.rows():
        for name in (*row.weights, *row.extra_weights):
            assert name in weights.BY_NAME, f"{row.name}: {name} is not in the manifest"
            assert name not in owners, f"{name} belongs to {owners[name]} and {row.name}"
            owners[name] = row.name
            if row.weights_set:  # a set lives in its folder
                assert weights.BY_NAME[name].filename.startswith(f"{row.weights_set}/")
    assert set(owners) == set(weights.BY_NAME), "a manifest file no engine uses"
    assert {row.kind for row in table.rows() if row.weights} == {"neural"}


def test_the_settings_a_row_names_exist() -> None:
    fields = Settings.model_fields
    for row in table.rows():
        for name in (row.checkpoint_setting, row.precision_setting, *row.options):
            assert name is None or name in fields, f"{row.name}: Settings has no field {name}"


def test_every_lipsync_row_module_registers_its_engine() -> None:
    import importlib

    for row in table.rows():
        if row.kind == "hosted":
            continue
        try:
            importlib.import_module(row.module)
        except ImportError as exc:  # an optional engine family's extra not installed here
            pytest.skip(f"{row.module}: {exc}")
        assert LIPSYNC_ENGINES[row.name].name == row.name


def test_register_refuses_a_name_the_table_does_not_hold() -> None:
    with pytest.raises(ValueError, match="no row in engines.table"):
        register("not_in_the_table")


def test_the_readme_lists_the_table() -> None:
    assert table.markdown() in (ROOT / "README.md").read_text(encoding="utf-8"), "README: paste table.markdown()"


# ---- a new engine: one row and its module ----------------------------------------------------------


@pytest.fixture
def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_settings: Settings):
    """A new engine's module on the path, its row appended to the table, its file in the manifest and on disk."""
    (tmp_path / "fake_lips_engine.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(table, "ROWS", (*table.ROWS, FAKE_ROW))
    monkeypatch.setattr(weights, "MANIFEST", (*weights.MANIFEST, FAKE_FILE))
    monkeypatch.setitem(weights.BY_NAME, FAKE, FAKE_FILE)
    monkeypatch.setattr(weights, "MOUNT_DIRS", (tmp_path / "no-mount",))
    yield local_settings.weights_dir / FAKE_FILE.filename
    LIPSYNC_ENGINES.pop(FAKE, None)
    sys.modules.pop("fake_lips_engine", None)


def test_a_new_row_is_chosen_loaded_reported_and_found(
    fake_engine: Path, runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TaskError, match="fetch-weights fake_lips"):  # named, its file missing
        engine_choice.choose(FAKE, runtime)
    assert engine_choice.choose("auto", runtime)[0] == table.CPU_ENGINE
    fake_engine.parent.mkdir(parents=True)
    fake_engine.write_bytes(bytes([77]))

    assert weights.find_for_engine(FAKE, runtime.settings.weights_dir) == (FAKE_FILE, fake_engine)
    assert engine_choice.choose("auto", runtime) == (FAKE, f"auto: {FAKE} weights found ({fake_engine})")
    engine, info = engine_choice.lipsync_engine(FAKE, runtime)
    assert type(engine).__module__ == "fake_lips_engine" and info["name"] == FAKE and info["licence"] == "Fake (test)"
    assert engine.context.precision == runtime.settings.wav2lip_precision
    assert engine.context.device == engine_choice.device()
    assert engine.context.options == {"wav2lip96_checkpoint": None}
    from engines.lipsync import AvatarFrames, DrivingAudio

    avatar = AvatarFrames(frames=[np.zeros((4, 4, 3), np.uint8)], coords=[(0, 4, 0, 4)])
    assert [int(f.max()) for f in engine.render(avatar, DrivingAudio(np.zeros(1280, np.float32)))] == [77, 77]

    health = engine_choice.describe(runtime)
    assert health["engine"] == FAKE and health["commercial_use"][FAKE] is True
    assert health["engines"][FAKE] == {
        "kind": "neural",
        "input": "both",
        "auto": True,
        "needs_cuda": False,
        "live": True,
        "commercial_use": True,
    }
    assert FAKE in table.markdown()


def test_a_new_row_is_in_the_schema_of_a_fresh_process(tmp_path: Path) -> None:
    """The request enum is built when the schema is imported: a process started with the row accepts the name
    (here and for live sessions); this one, without the row, refuses it."""
    with pytest.raises(ValidationError):
        GenerateVideoRequest(user_id="u", avatar_id="a", text="hi", engine=FAKE)
    script = textwrap.dedent(
        f"""
        import json
        from engines import table
        table.ROWS = (*table.ROWS, table.EngineRow({FAKE!r}, "fake_lips_engine", "neural", auto=0))
        from handlers.schemas import GenerateVideoRequest, LipSyncEngineName, LIVE_ENGINES
        request = GenerateVideoRequest(user_id="u", avatar_id="a", text="hi", engine={FAKE!r})
        print(json.dumps([request.engine, LipSyncEngineName.{FAKE}.value, {FAKE!r} in LIVE_ENGINES]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [FAKE, FAKE, True]
