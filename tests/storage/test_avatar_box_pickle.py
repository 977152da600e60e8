"""coords.pkl without pickle machinery: what LiveTalking, older genavatar and MuseTalk write is read exactly;
hostile pickles (code-running reduces, native-crash shapes, decode bombs, memo amplification) end as
``invalid_avatar`` in a child process under a memory cap."""

from __future__ import annotations

import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from storage.avatar.box_pickle import MAX_BOXES, BoxPickleError, read_boxes_pickle
from storage.avatar.layout import read_coords
from tests.storage.avatar_hostile import GIB, address_space_now, hostile_pickles, run_isolated
from tests.storage.pickle_bombs import build_bombs, work_bombs

BOXES = [(1, 50, 2, 60), (3, 70, 4, 80), (0, 59999, 5, 6)]  # fits every dtype below


def _legit_pickles() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}
    for protocol in range(6):
        cases[f"int_tuples_p{protocol}"] = pickle.dumps(BOXES, protocol=protocol)
        cases[f"int_lists_p{protocol}"] = pickle.dumps([list(b) for b in BOXES], protocol=protocol)
    for protocol in range(2, 6):
        for dtype in (np.int64, np.int32, np.uint16):
            scalars = [tuple(dtype(v) for v in box) for box in BOXES]
            cases[f"{dtype.__name__}_scalars_p{protocol}"] = pickle.dumps(scalars, protocol=protocol)
        cases[f"array_p{protocol}"] = pickle.dumps(np.array(BOXES, dtype=np.int64), protocol=protocol)
        cases[f"fortran_int32_array_p{protocol}"] = pickle.dumps(
            np.asfortranarray(np.array(BOXES, dtype=np.int32)), protocol=protocol
        )
        cases[f"list_of_arrays_p{protocol}"] = pickle.dumps([np.array(b) for b in BOXES], protocol=protocol)
    # numpy 1 wrote numpy.core.multiarray; protocols 2-3 name globals as text, so the path is a plain rewrite
    for protocol in (2, 3):
        for kind, obj in (("scalars", [tuple(np.int64(v) for v in b) for b in BOXES]), ("array", np.array(BOXES))):
            numpy2 = pickle.dumps(obj, protocol=protocol)
            assert b"numpy._core" in numpy2
            cases[f"numpy1_{kind}_p{protocol}"] = numpy2.replace(b"numpy._core", b"numpy.core")
    return cases


LEGIT = _legit_pickles()


@pytest.mark.parametrize("name", sorted(LEGIT))
def test_legit_box_pickles_are_read_exactly(name: str) -> None:
    """Class: compatibility: every shape upstream writers produce reads as the same (N, 4) boxes."""
    boxes = read_boxes_pickle(LEGIT[name])
    assert boxes.dtype == np.int64 and boxes.shape == (3, 4)
    assert [tuple(row) for row in boxes.tolist()] == BOXES


def test_large_int64_values_keep_their_value() -> None:
    """Class: compatibility: int64 scalars and big-endian arrays decode by their declared byte order."""
    big = [(0, 2**40, 5, -6)]
    assert read_boxes_pickle(pickle.dumps([tuple(np.int64(v) for v in big[0])], protocol=2)).tolist() == [list(big[0])]
    swapped = np.array(big, dtype=">i8")
    assert read_boxes_pickle(pickle.dumps(swapped, protocol=3)).tolist() == [list(big[0])]
    assert read_boxes_pickle(pickle.dumps(swapped, protocol=5)).tolist() == [list(big[0])]


def test_memo_shared_boxes_are_read() -> None:
    """Class: compatibility: repeated boxes (one tuple memoised and referenced) read once per frame."""
    assert read_boxes_pickle(pickle.dumps([(1, 2, 3, 4)] * 5, protocol=4)).tolist() == [[1, 2, 3, 4]] * 5


def test_read_coords_gives_plain_int_tuples(tmp_path: Path) -> None:
    """Class: compatibility: coords.pkl of numpy scalars reads as plain-int tuples."""
    path = tmp_path / "coords.pkl"
    path.write_bytes(LEGIT["int64_scalars_p2"])
    coords = read_coords(path)
    assert coords == BOXES and all(type(v) is int for box in coords for v in box)


HOSTILE = {**hostile_pickles(), **build_bombs(), **work_bombs()}
MIB = 1024 * 1024
AVATAR_FRAMES = 25  # an avatar's reader passes its frame count: the budgets scale with it
FULL_LENGTH = 7500  # 300 s at 25 fps (MAX_VIDEO_SECONDS)


def _read_in_child(data: bytes, path: Path):  # noqa: ANN202 - the case callable run_isolated expects
    def case() -> str:
        path.write_bytes(data)
        read_coords(path)
        return "ok"

    return case


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pickle_is_an_invalid_avatar_in_a_capped_child(name: str, tmp_path: Path) -> None:
    """Class: unpickling user bytes: each hostile pickle ends as invalid_avatar, no crash, nothing run."""
    marker = Path("/tmp/hostile-pickle-ran")
    marker.unlink(missing_ok=True)
    outcome = run_isolated(
        _read_in_child(HOSTILE[name], tmp_path / "coords.pkl"), address_space=address_space_now() + GIB
    )
    assert not outcome.crashed, f"{name}: child died with status {outcome.exit_status}"
    assert outcome.code == "invalid_avatar", f"{name}: {outcome.code}"
    assert not marker.exists()


def test_caps_are_parameters() -> None:
    """Class: decode bombs: the entry and byte caps refuse before building anything."""
    data = pickle.dumps([(1, 2, 3, 4)] * 10, protocol=4)
    with pytest.raises(BoxPickleError, match="more than 5 entries"):
        read_boxes_pickle(data, max_boxes=5)
    with pytest.raises(BoxPickleError, match="over the limit of 10"):
        read_boxes_pickle(data, max_bytes=10)


def test_reads_musetalk_mask_coords(tmp_path: Path) -> None:
    """Class: compatibility: MuseTalk's mask_coords.pkl (lists of [x1, y1, x2, y2], ints or numpy ints)."""
    from storage.avatar.layout import read_boxes_file

    crop_boxes = [[10, 20, 266, 276], [11, 21, 267, 277]]
    path = tmp_path / "mask_coords.pkl"
    path.write_bytes(pickle.dumps([[np.int64(v) for v in box] for box in crop_boxes]))
    assert read_boxes_file(path) == [tuple(box) for box in crop_boxes]
    path.write_bytes(pickle.dumps(crop_boxes))
    assert read_boxes_file(path) == [tuple(box) for box in crop_boxes]


def _refusal_peak(data: bytes, max_boxes: int) -> tuple[str, int, float]:
    """(message, peak bytes traced while decoding, CPU seconds) of a refused decode."""
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(BoxPickleError) as err:
            read_boxes_pickle(data, max_boxes=max_boxes)
        return str(err.value), tracemalloc.get_traced_memory()[1], time.process_time() - started
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(build_bombs()))
@pytest.mark.parametrize("max_boxes", [AVATAR_FRAMES, FULL_LENGTH, MAX_BOXES])
def test_build_bombs_are_refused_before_they_build(name: str, max_boxes: int) -> None:
    """Class: build bombs: a memoised buffer, scalar or text referenced again and again is counted each time it
    is turned into an array (elements and bytes built, not read); peak memory stays within a few MB of the input."""
    data = build_bombs()[name]
    message, peak, _ = _refusal_peak(data, max_boxes)
    assert peak <= len(data) + 4 * MIB, f"{name}: {peak / MIB:.1f} MiB traced for {len(data) / MIB:.1f} MiB ({message})"


@pytest.mark.parametrize("name", sorted(work_bombs()))
@pytest.mark.parametrize("max_boxes", [AVATAR_FRAMES, FULL_LENGTH, MAX_BOXES])
def test_work_bombs_are_refused_within_an_opcode_budget(name: str, max_boxes: int) -> None:
    """Class: decoder work: megabytes of memo reads, no-op frames, references or memo writes are refused by the
    stack, framing, memo and opcode budgets (which scale with the boxes allowed), not after seconds of CPU."""
    data = work_bombs()[name]
    message, peak, cpu_s = _refusal_peak(data, max_boxes)
    assert peak <= len(data) + 4 * MIB, f"{name}: {peak / MIB:.1f} MiB traced ({message})"
    assert cpu_s < 5.0, f"{name}: {cpu_s:.1f} s of CPU before the refusal ({message})"  # 26 s before the budgets


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_budgets_admit_a_full_length_avatar(protocol: int) -> None:
    """Class: compatibility at the budgets' edge: 7500 boxes (300 s at 25 fps) in the costliest layouts read
    under a budget of exactly 7500 boxes."""
    boxes = [(i, i + 1, i + 2, i + 3) for i in range(FULL_LENGTH)]
    for obj in ([tuple(np.int64(v) for v in b) for b in boxes], np.array(boxes), [np.array(b) for b in boxes]):
        assert read_boxes_pickle(pickle.dumps(obj, protocol=protocol), max_boxes=FULL_LENGTH).tolist() == [
            list(b) for b in boxes
        ]
