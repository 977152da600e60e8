"""A subset of bench/hostile.py's corpus, run the same way: through handlers.dispatch in forked children under
a memory and file-size cap; each ends as its expected error_code, nothing crashes, the cache stays empty."""

from __future__ import annotations

from pathlib import Path

import pytest

import handlers
from handlers.runtime import Engines, WorkerRuntime
from handlers.settings import Settings
from tests.storage.avatar_hostile import GIB, address_space_now, all_cases, bytes_under, run_case

SUBSET = {
    "traversal": "TAR path traversal",
    "symlink": "TAR links",
    "device": "TAR device files",
    "pax_header_bomb": "decode bombs in TAR headers",
    "declared_size_lie": "entries over their layout cap",
    "png_header_bomb_first": "PNG header bombs",
    "png_header_bomb_later": "frames of differing size",
    "meta_deeply_nested": "deeply nested meta.json",
    "nan_landmarks": "non-finite landmarks",
    "pickle_scalar_object_pointer": "native-crash pickle shapes",
    "pickle_reduce_os_system_p2": "code-running reduces",
    "pickle_memo_nested_fanout": "memo amplification",
    "image_png_header_bomb": "image header bombs through render_emotion",
    "audio_garbage": "malformed audio through generate_video",
}
CASES = {case.name: case for case in all_cases(big=False) if case.name in SUBSET}


@pytest.fixture(scope="module")
def loaded(test_engines: Engines) -> None:
    """Engines loaded once in this process, so every forked child starts with them (as a worker's would)."""
    handlers.load_engines(WorkerRuntime(Settings(), test_engines), ["generate_video", "render_emotion"])


@pytest.mark.parametrize("name", sorted(SUBSET))
def test_hostile_input_is_refused_cleanly_in_a_capped_child(
    name: str, loaded: None, local_settings: Settings, runtime: WorkerRuntime, tmp_path: Path
) -> None:
    """Class: crash containment and clean refusals (see SUBSET for the class of each case)."""
    case = CASES[name]
    outcome = run_case(case, tmp_path, runtime, address_space=address_space_now() + GIB)
    assert not outcome.crashed, f"{name} ({SUBSET[name]}): the child died with status {outcome.exit_status}"
    assert outcome.code in case.expected, f"{name} ({SUBSET[name]}): {outcome.code}"
    assert bytes_under(local_settings.avatar_local_path) == 0
