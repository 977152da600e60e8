"""A subset of bench/hostile.py's corpus, run the same way: through handlers.dispatch in forked children under
a memory and file-size cap; each ends as its expected error_code, nothing crashes, the cache stays empty."""

from __future__ import annotations

from pathlib import Path

import pytest

import handlers
from handlers.runtime import Engines, WorkerRuntime
from handlers.settings import Settings
from tests.storage.avatar_hostile import (
    GIB,
    _tar_case,
    _with_coords,
    address_space_now,
    all_cases,
    bytes_under,
    run_case,
)

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
NEW_CLASSES = {
    "pickle_build_frombuffer_memo_repeats": "build bombs in coords.pkl (issue 20)",
    "pickle_work_memo_reads": "work bombs in coords.pkl (issue 20)",
    "latents_zero_stride": "tensor bombs in latents.pt (issue 20)",
    "latents_compressed_records": "compressed latents.pt records (issue 20)",
    "image_dots_encoded_lower": "encoded dot segments in an input URI (issue 20)",
    "audio_raw_backslash": "backslashes in an input URI (issue 20)",
    "store_dots_plain": "dot segments in a request's store (issue 20)",
}
SUBSET |= NEW_CLASSES


def _new_class_cases() -> list:
    from tests.storage.hostile_classes import _musetalk_tar, _payload_case
    from tests.storage.pickle_bombs import build_bombs, work_bombs
    from tests.storage.tensor_bombs import hostile_latents
    from tests.storage.uri_attacks import escapes

    bombs = {**build_bombs(), **work_bombs()}
    cases = [
        _tar_case(f"pickle_{name}", "pickle", {"invalid_avatar"}, _with_coords(bombs[name]))
        for name in ("build_frombuffer_memo_repeats", "work_memo_reads")
    ]
    latents = hostile_latents()
    cases += [
        _tar_case(f"latents_{name}", "tensor", {"invalid_avatar"}, _musetalk_tar(latents[name]))
        for name in ("zero_stride", "compressed_records")
    ]
    store = Settings().avatar_store_uri
    own = escapes(f"{store}/uploads/attacker/", "victim", "secret.png")
    cases += [
        _payload_case("image_dots_encoded_lower", {"task": "render_emotion", "image": own["dots_encoded_lower"]}),
        _payload_case("audio_raw_backslash", {"task": "generate_video", "audio": own["raw_backslash"]}),
        _payload_case("store_dots_plain", {"task": "render_emotion", "image": "data:,x", "store": f"{store}/../x"}),
    ]
    return cases


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
    case = CASES.get(name) or {c.name: c for c in _new_class_cases()}[name]
    outcome = run_case(case, tmp_path, runtime, address_space=address_space_now() + GIB)
    assert not outcome.crashed, f"{name} ({SUBSET[name]}): the child died with status {outcome.exit_status}"
    assert outcome.code in case.expected, f"{name} ({SUBSET[name]}): {outcome.code}"
    assert bytes_under(local_settings.avatar_local_path) == 0


def test_the_corpus_classes_are_selectable() -> None:
    """The bench's classes (`bench/hostile.py --only CLASS`): one function each, issue 20's included."""
    from tests.storage.hostile_classes import CLASSES

    assert {"tars", "pickles", "media", "tensors", "uris", "streams"} <= set(CLASSES)
