"""A hostile-input corpus of our own making and a runner that tries each case in a child process.

Each case runs in a forked child under ``RLIMIT_AS`` (address space) and ``RLIMIT_FSIZE`` (largest file),
so a native crash, a memory bomb or a disk bomb shows up as a dead child instead of taking the caller
down. ``bench/hostile.py`` runs the whole corpus; tests run subsets the same way.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from storage.errors import StorageError

GIB = 1024**3


@dataclass
class Outcome:
    """What one case ended as: ``code`` is the error code (or ``ok``), None when the child died."""

    code: str | None
    exit_status: int | None
    peak_rss_mb: float

    @property
    def crashed(self) -> bool:
        return self.code is None


def address_space_now() -> int:
    """This process's current virtual size in bytes (a forked child starts with it)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()


def _child(case: Callable[[], str], address_space: int, file_size: int, conn: object) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    try:
        code = case()
    except StorageError as exc:
        code = exc.code
    except MemoryError:
        code = "memory_error"
    except Exception as exc:  # an unexpected exception is a finding, reported by its type
        code = getattr(exc, "code", None) or f"exception:{type(exc).__name__}"
    conn.send((code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))  # type: ignore[attr-defined]
    conn.close()  # type: ignore[attr-defined]
    os._exit(0)


def run_isolated(
    case: Callable[[], str], *, address_space: int, file_size: int = GIB, timeout_s: float = 60.0
) -> Outcome:
    """Run ``case`` (returning ``ok`` or raising StorageError) in a forked child under the two limits."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, address_space, file_size, sender))
    proc.start()
    sender.close()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if receiver.poll():
        code, rss = receiver.recv()
        return Outcome(code, proc.exitcode, rss)
    return Outcome(None, proc.exitcode, 0.0)


# --- pickles ------------------------------------------------------------------------------------------
# A tiny assembler for hand-made opcode streams (the layouts pickle.dumps would never write).

STOP, MARK, TUPLE, REDUCE, BUILD, APPEND, APPENDS = b".", b"(", b"t", b"R", b"b", b"a", b"e"
EMPTY_LIST, NEWTRUE, NEWFALSE, TUPLE2, TUPLE3 = b"]", b"\x88", b"\x89", b"\x86", b"\x87"
PROTO2, PROTO5 = b"\x80\x02", b"\x80\x05"


def op_global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def op_put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def op_get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def op_dtype(code: str) -> bytes:
    return op_global("numpy", "dtype") + op_str(code) + NEWFALSE + NEWTRUE + TUPLE3 + REDUCE


def _reduce_of(func: object, *args: object) -> object:
    class Reducer:
        def __reduce__(self) -> tuple:
            return (func, args)

    return Reducer()


def _code_running(protocol: int) -> dict[str, bytes]:
    evil = {
        "os_system": _reduce_of(os.system, "touch /tmp/hostile-pickle-ran"),
        "eval": _reduce_of(eval, "__import__('os').getpid()"),
        "exec": _reduce_of(exec, "x = 1"),
    }
    return {f"reduce_{name}_p{protocol}": pickle.dumps(obj, protocol=protocol) for name, obj in evil.items()}


def _native_crash_shapes() -> dict[str, bytes]:
    pointer = struct.pack("<Q", 0x4141414141414141)
    scalar = op_global("numpy._core.multiarray", "scalar")
    reconstruct = op_global("numpy._core.multiarray", "_reconstruct") + op_global("numpy", "ndarray")
    shell = reconstruct + op_int(0) + b"\x85" + op_bytes(b"b") + TUPLE3 + REDUCE
    return {
        # numpy's scalar() with an object dtype reads the bytes as a PyObject pointer
        "scalar_object_pointer": PROTO2 + scalar + op_dtype("O8") + op_bytes(pointer) + TUPLE2 + REDUCE + STOP,
        "array_object_pointers": PROTO2
        + shell
        + MARK
        + op_int(1)
        + op_int(1)
        + op_int(4)
        + TUPLE2
        + op_dtype("O8")
        + NEWFALSE
        + op_bytes(pointer * 4)
        + TUPLE
        + BUILD
        + STOP,
        "array_shape_beyond_data": PROTO2
        + shell
        + MARK
        + op_int(1)
        + op_int(2**30)
        + op_int(4)
        + TUPLE2
        + op_dtype("i8")
        + NEWFALSE
        + op_bytes(b"\0" * 32)
        + TUPLE
        + BUILD
        + STOP,
        "scalar_short_data": PROTO2 + scalar + op_dtype("i8") + op_bytes(b"\0\0\0") + TUPLE2 + REDUCE + STOP,
        "dtype_subarray_bomb": PROTO2 + scalar + op_dtype("(1000000000,)i8") + op_bytes(b"") + TUPLE2 + REDUCE + STOP,
        "dtype_void_bomb": PROTO2 + scalar + op_dtype("V2000000000") + op_bytes(b"") + TUPLE2 + REDUCE + STOP,
        "frombuffer_beyond_data": PROTO5
        + op_global("numpy._core.numeric", "_frombuffer")
        + MARK
        + op_bytes(b"\0" * 8)
        + op_dtype("i8")
        + op_int(10**9)
        + op_int(4)
        + TUPLE2
        + op_str("C")
        + TUPLE
        + REDUCE
        + STOP,
    }


def _bombs() -> dict[str, bytes]:
    box = EMPTY_LIST + MARK + op_int(1) + op_int(2) + op_int(3) + op_int(4) + TUPLE + op_put(0) + APPEND
    fanout = MARK + op_get(0) * 1000 + APPENDS  # 1000 references to the memoised box, 5 bytes each
    # outer -> 2000 x mid -> 2000 x inner -> 1000 ints: 4e9 numbers if anything expanded the references
    inner = EMPTY_LIST + MARK + op_int(7) * 1000 + APPENDS + op_put(0)
    mid = EMPTY_LIST + MARK + inner + op_get(0) * 1999 + APPENDS + op_put(1)
    nested = EMPTY_LIST + MARK + mid + op_get(1) * 1999 + APPENDS
    long4 = b"\x8b" + struct.pack("<i", 8_000_000) + b"\x7f" * 8_000_000  # an 8 MB integer
    return {
        "memo_fanout_past_entry_cap": PROTO2 + box + fanout * 300 + STOP,
        "memo_nested_fanout": PROTO2 + nested + STOP,
        "deep_marks": PROTO2 + MARK * 100_000 + STOP,
        "deep_lists": PROTO2 + EMPTY_LIST * 100_000 + APPEND * 99_999 + STOP,
        "huge_long4": PROTO2 + EMPTY_LIST + long4 + APPEND + STOP,
        "text_long_digits": b"(L" + b"9" * 100_000 + b"L\nl.",
        "codecs_encode_utf32": PROTO2
        + op_global("_codecs", "encode")
        + op_str("x" * 1_000_000)
        + op_str("utf-32")
        + TUPLE2
        + REDUCE
        + STOP,
        "over_size_cap": PROTO2 + EMPTY_LIST + MARK + b"K\x01" * (9 * 1024 * 1024) + APPENDS + STOP,
    }


def _other_machinery() -> dict[str, bytes]:
    return {
        "getattr_builtins_eval": PROTO2
        + op_global("builtins", "getattr")
        + op_global("builtins", "__builtins__")
        + op_str("eval")
        + TUPLE2
        + REDUCE
        + STOP,
        "inst_opcode": b"(I1\nios\nsystem\n.",
        "obj_opcode": PROTO2 + MARK + op_global("os", "system") + op_str("true") + b"o" + STOP,
        "newobj": PROTO2 + op_global("subprocess", "Popen") + MARK + op_str("true") + TUPLE + b"\x81" + STOP,
        "ext_registry": PROTO2 + b"\x82\x01" + STOP,
        "persistent_id": b"Pfoo\n.",
        "out_of_band_buffer": PROTO5 + b"\x97" + STOP,
        "dict_setitem": PROTO2 + b"}" + op_str("a") + op_int(1) + b"s" + STOP,
        "floats": pickle.dumps([(1.0, 2.0, 3.0, 4.0)], protocol=4),
        "bools": pickle.dumps([(True, False, True, False)], protocol=4),
        "strings": pickle.dumps([("1", "2", "3", "4")], protocol=4),
        "three_values": pickle.dumps([(1, 2, 3)], protocol=4),
        "int_out_of_range": pickle.dumps([(2**70, 2, 3, 4)], protocol=4),
        "object_array": pickle.dumps(np.array([[1, 2, 3, 4]], dtype=object), protocol=4),
        "float_array": pickle.dumps(np.zeros((2, 4), dtype=np.float64), protocol=4),
        "array_3d": pickle.dumps(np.zeros((2, 4, 1), dtype=np.int64), protocol=4),
        "truncated": pickle.dumps([(1, 2, 3, 4)] * 10, protocol=4)[:-7],
        "no_stop": pickle.dumps([(1, 2, 3, 4)], protocol=2)[:-1],
        "empty": b"",
        "not_a_pickle": b"GIF89a not a pickle at all",
    }


def hostile_pickles() -> dict[str, bytes]:
    """Pickles a coords.pkl reader must refuse as ``invalid_avatar``, by attack class."""
    corpus: dict[str, bytes] = {}
    for protocol in range(6):
        corpus.update(_code_running(protocol))
    corpus.update(_native_crash_shapes())
    corpus.update(_bombs())
    corpus.update(_other_machinery())
    return corpus
