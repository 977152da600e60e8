"""Pickles that make a decoder build or work far beyond their size (issue 20): each is a few bytes per
repetition of something the opcode reader must count, not only read.

- build bombs: one memoised buffer referenced again and again, each reference turned into a new array
  (13 bytes of opcodes for a 6.4 MB int64 array), or into numpy scalars, or into BUILD states.
- work bombs: megabytes of cheap opcodes (memo reads, no-op frames, tuples of references, memo writes)
  that cost the decoder seconds of CPU if it only counts bytes.
"""

from __future__ import annotations

import struct

from tests.storage.avatar_hostile import (
    APPEND,
    BUILD,
    EMPTY_LIST,
    MARK,
    NEWFALSE,
    PROTO2,
    PROTO5,
    REDUCE,
    STOP,
    TUPLE,
    TUPLE2,
    TUPLE3,
    op_bytes,
    op_dtype,
    op_global,
    op_int,
    op_str,
)

BINPUT, BINGET, TUPLE1, FRAME = b"q", b"h", b"\x85", b"\x95"
MB = 1024 * 1024


def _put(index: int) -> bytes:
    return BINPUT + bytes([index])


def _get(index: int) -> bytes:
    return BINGET + bytes([index])


def _frombuffer_repeated(repeats: int, elements: int = 80_000) -> bytes:
    """An i1 buffer of ``elements`` bytes made into a (elements/4, 4) int64 array, then ``repeats`` x 14 bytes,
    each a new array from the same memoised arguments (800 KB of buffer asks for 6.4 MB per repetition)."""
    first = op_global("numpy._core.numeric", "_frombuffer") + _put(0) + MARK + op_bytes(b"\x01" * elements) + _put(1)
    first += op_dtype("i1") + _put(2) + op_int(elements // 4) + op_int(4) + TUPLE2 + _put(3) + op_str("C") + _put(4)
    first += TUPLE + REDUCE + APPEND
    again = _get(0) + MARK + _get(1) + _get(2) + _get(3) + _get(4) + TUPLE + REDUCE + APPEND
    return PROTO5 + EMPTY_LIST + first + again * repeats + STOP


def _scalars_repeated(repeats: int) -> bytes:
    """One numpy scalar whose global, dtype and buffer are memoised, then ``repeats`` more (7 bytes each)."""
    first = op_global("numpy._core.multiarray", "scalar") + _put(0) + op_dtype("i8") + _put(1)
    first += op_bytes(b"\x00" * 8) + _put(2) + TUPLE2 + REDUCE + APPEND
    again = _get(0) + _get(1) + _get(2) + TUPLE2 + REDUCE + APPEND
    return PROTO2 + EMPTY_LIST + first + again * repeats + STOP


def _reconstruct_repeated(repeats: int, elements: int = 80_000) -> bytes:
    """Array shells filled by BUILD from one memoised state (a big buffer), ``repeats`` times."""
    shell = op_global("numpy._core.multiarray", "_reconstruct") + _put(0) + op_global("numpy", "ndarray")
    shell += op_int(0) + TUPLE1 + op_bytes(b"b") + TUPLE3 + _put(1) + REDUCE
    state = MARK + op_int(1) + op_int(elements // 4) + op_int(4) + TUPLE2 + op_dtype("i1") + NEWFALSE
    state += op_bytes(b"\x01" * elements) + TUPLE + _put(2)
    again = _get(0) + _get(1) + REDUCE + _get(2) + BUILD + APPEND
    return PROTO2 + EMPTY_LIST + shell + state + BUILD + APPEND + again * repeats + STOP


def _encode_repeated(repeats: int, chars: int = 1_000_000) -> bytes:
    """One memoised 1 MB text encoded to bytes ``repeats`` times (protocol 2's way to write array buffers)."""
    first = op_global("_codecs", "encode") + _put(0) + op_str("x" * chars) + op_str("latin1") + TUPLE2 + _put(1)
    first += REDUCE + APPEND
    again = _get(0) + _get(1) + REDUCE + APPEND
    return PROTO2 + EMPTY_LIST + first + again * repeats + STOP


def _dtype_order_loop(repeats: int) -> bytes:
    """BUILD on one dtype again and again: the stack stays flat, only opcodes are spent."""
    state = MARK + op_int(3) + op_str("<") + TUPLE + _put(0)
    return PROTO2 + op_dtype("i8") + state + BUILD + (_get(0) + BUILD) * repeats + STOP


def build_bombs() -> dict[str, bytes]:
    return {
        "build_frombuffer_memo_repeats": _frombuffer_repeated(60_000),  # 920 KB asking for 38 GB
        "build_scalar_memo_repeats": _scalars_repeated(400_000),
        "build_reconstruct_memo_repeats": _reconstruct_repeated(60_000),
        "build_encode_memo_repeats": _encode_repeated(30_000),
    }


def work_bombs() -> dict[str, bytes]:
    box = EMPTY_LIST + MARK + op_int(1) + op_int(2) + op_int(3) + op_int(4) + TUPLE + _put(0)
    frame = FRAME + struct.pack("<Q", 0)
    return {
        "work_dtype_order_loop": _dtype_order_loop(3 * MB),
        "work_memo_reads": PROTO2 + box + _get(0) * (7 * MB) + STOP,  # 14 MB of memo reads
        "work_noop_frames": PROTO5 + EMPTY_LIST + frame * (MB + MB // 2) + STOP,
        "work_tuples_of_references": PROTO2 + box + (_get(0) + TUPLE1) * (3 * MB) + STOP,
        "work_memo_writes": PROTO2 + box + b"".join(b"r" + struct.pack("<I", i) for i in range(1, 2 * MB)) + STOP,
        "work_appends_of_references": PROTO2 + box + EMPTY_LIST + (_get(0) + APPEND) * (3 * MB) + STOP,
    }
