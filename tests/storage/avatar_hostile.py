"""A hostile-input corpus of our own making and a runner that tries each case in a child process.

Each case runs in a forked child under ``RLIMIT_AS`` (address space) and ``RLIMIT_FSIZE`` (largest file),
so a native crash, a memory bomb or a disk bomb shows up as a dead child instead of taking the caller
down. ``bench/hostile.py`` runs the whole corpus; tests run subsets the same way.
"""

from __future__ import annotations

import gzip
import io
import lzma
import multiprocessing
import os
import pickle
import resource
import signal
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from storage.errors import StorageError
from tests.storage.avatar_factory import FACE_SIZE, FRAME_H, FRAME_W, add_bytes

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
    """Run ``case`` (returning ``ok`` or raising StorageError) in a forked child under the two limits.

    A child that neither answers nor dies within ``timeout_s`` is killed and tried once more: forking a
    process whose other threads hold a lock (test servers, thread pools) can leave the child stuck on that
    lock by chance, while an input that really hangs the reader hangs both times and is reported as a crash.
    """
    outcome = _run_once(case, address_space, file_size, timeout_s)
    if outcome.crashed and outcome.exit_status == -signal.SIGKILL:
        outcome = _run_once(case, address_space, file_size, timeout_s)
    return outcome


def _run_once(case: Callable[[], str], address_space: int, file_size: int, timeout_s: float) -> Outcome:
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, address_space, file_size, sender))
    proc.start()
    sender.close()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
    try:
        code, rss = receiver.recv() if receiver.poll() else (None, 0.0)
    except EOFError:  # the child died before it answered
        code, rss = None, 0.0
    finally:
        receiver.close()
    return Outcome(code, proc.exitcode, rss)


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
        "deep_tuples": PROTO2 + b")" + b"\x85" * 100_000 + STOP,
        # An inner list appended first and filled afterwards through the memo: depth that grows later.
        "deep_lists_filled_later": PROTO2
        + EMPTY_LIST
        + (EMPTY_LIST + op_put(0) + APPEND + op_get(0) + EMPTY_LIST + APPEND) * 3
        + STOP,
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


# --- avatar TARs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile input: ``make(work)`` writes it and returns the task payload that feeds it to a worker."""

    name: str
    attack: str
    expected: frozenset[str]
    make: Callable[[Path], dict]


def _frame_png(width: int = FRAME_W, height: int = FRAME_H, value: int = 90) -> bytes:
    return cv2.imencode(".png", np.full((height, width, 3), value, np.uint8))[1].tobytes()


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(_frame_png())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _avatar_entries(
    frames: int = 2, coords: bytes | None = None, prefix: str = "av/"
) -> list[tuple[str, bytes, dict[str, object]]]:
    """The entries of a small valid avatar (name, data, TarInfo attributes)."""
    face = _frame_png(FACE_SIZE, FACE_SIZE, 30)
    coords = pickle.dumps([(2, 30, 3, 33)] * frames, protocol=4) if coords is None else coords
    entries = [(f"{prefix}coords.pkl", coords, {})]
    for i in range(frames):
        entries.append((f"{prefix}full_imgs/{i:08d}.png", _frame_png(), {}))
        entries.append((f"{prefix}face_imgs/{i:08d}.png", face, {}))
    return entries


def _tar_bytes(entries: list[tuple[str, bytes, dict[str, object]]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data, attrs in entries:
            add_bytes(tar, name, data, **attrs)
    return out.getvalue()


def _avatar_request(avatar_id: str, tar: bytes) -> Callable[[Path], dict]:
    """Puts ``tar`` in the store as user ``attacker``'s avatar and asks for a video of it."""

    def make(work: Path) -> dict:
        folder = work / "store" / "avatars" / "attacker"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{avatar_id}.tar").write_bytes(tar)
        return {"task": "generate_video", "user_id": "attacker", "avatar_id": avatar_id, "text": "Hello."}

    return make


def _tar_case(name: str, attack: str, expected: set[str], tar: Callable[[], bytes]) -> Case:
    def make(work: Path) -> dict:
        return _avatar_request(name, tar())(work)

    return Case(name, attack, frozenset(expected), make)


def _zeros_after_png(size: int) -> bytes:
    """A real PNG header and then ``size`` zero bytes: passes the header check, compresses ~1000:1."""
    return _frame_png() + b"\0" * size


def _bomb(compress: Callable[[bytes], bytes], frames: int, frame_bytes: int) -> bytes:
    entries = [(f"av/full_imgs/{i:08d}.png", _zeros_after_png(frame_bytes), {}) for i in range(frames)]
    return compress(_tar_bytes(entries))


def _device(name: str) -> tuple[str, bytes, dict[str, object]]:
    return (name, b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})


def hostile_tars(big: bool = True) -> list[Case]:
    """Avatar TARs a worker must refuse cleanly; ``big`` adds the decompression bombs (seconds to build)."""
    valid = _avatar_entries()
    nan = io.BytesIO()
    np.save(nan, np.full((2, 68, 2), np.nan, np.float32))
    mixed = [*valid, ("av/full_imgs/00000002.png", _frame_png(FRAME_W, FRAME_H + 8), {})]
    mixed += [("av/face_imgs/00000002.png", _frame_png(FACE_SIZE, FACE_SIZE), {})]
    cases = [
        ("traversal", "unsafe_archive", lambda: _tar_bytes([*valid, ("av/../../escaped", b"x", {})])),
        ("absolute_path", "unsafe_archive", lambda: _tar_bytes([*valid, ("/tmp/hostile-abs", b"x", {})])),
        ("symlink", "unsafe_archive", lambda: _tar_bytes([*valid, _link("av/meta.json", tarfile.SYMTYPE)])),
        ("hardlink", "unsafe_archive", lambda: _tar_bytes([*valid, _link("av/meta.json", tarfile.LNKTYPE)])),
        ("device", "unsafe_archive", lambda: _tar_bytes([*valid, _device("av/full_imgs/00000005.png")])),
        ("fifo", "unsafe_archive", lambda: _tar_bytes([*valid, ("av/meta.json", b"", {"type": tarfile.FIFOTYPE})])),
        ("outside_layout", "unsafe_archive", lambda: _tar_bytes([*valid, ("av/run.sh", b"#!/bin/sh", {})])),
        ("second_avatar", "unsafe_archive", lambda: _tar_bytes([*valid, ("other/coords.pkl", b"x", {})])),
        ("declared_size_lie", "unsafe_archive", lambda: _declared_lie()),
        ("pax_header_bomb", "unsafe_archive", lambda: _pax_bomb()),
        ("png_header_bomb_first", "invalid_avatar", lambda: _first_frame(_png_declaring(60_000, 60_000))),
        ("png_header_bomb_later", "invalid_avatar", lambda: _later_frame(_png_declaring(FRAME_W * 8, FRAME_H * 8))),
        ("not_an_image_frame", "invalid_avatar", lambda: _later_frame(b"GIF89a" + b"\0" * 64)),
        ("truncated_jpeg_frame", "invalid_avatar", lambda: _later_frame(b"\xff\xd8\xff\xc0\x00\x11\x08")),
        ("meta_deeply_nested", "invalid_avatar", lambda: _tar_bytes([*valid, ("av/meta.json", _deep_json(), {})])),
        ("meta_not_json", "invalid_avatar", lambda: _tar_bytes([*valid, ("av/meta.json", b"\xff{", {})])),
        ("meta_list", "invalid_avatar", lambda: _tar_bytes([*valid, ("av/meta.json", b"[1]", {})])),
        ("nan_landmarks", "invalid_avatar", lambda: _tar_bytes([*valid, ("av/landmarks.npy", nan.getvalue(), {})])),
        ("mixed_frame_sizes", "invalid_avatar", lambda: _tar_bytes(_fix_coords(mixed, 3))),
        ("boxes_outside_frame", "invalid_avatar", lambda: _tar_bytes(_avatar_entries(coords=_boxes(-5, 900)))),
        ("not_a_tar", "invalid_archive", lambda: b"PK\x03\x04 a zip is not a tar" * 40),
        ("truncated_tar", "invalid_archive", lambda: _tar_bytes(valid)[:3000]),
        ("truncated_gzip", "invalid_archive", lambda: gzip.compress(_tar_bytes(valid))[:200]),
    ]
    out = [_tar_case(name, "tar", {code}, build) for name, code, build in cases]
    for name, data in hostile_pickles().items():
        # over 16 MiB, coords.pkl is refused by its entry cap before the decoder sees it
        codes = {"invalid_avatar", "unsafe_archive"} if name == "over_size_cap" else {"invalid_avatar"}
        out.append(_tar_case(f"pickle_{name}", "pickle", codes, _with_coords(data)))
    if big:
        mib = 1024 * 1024
        refused = {"unsafe_archive"}
        out.append(_tar_case("gzip_bomb", "tar", refused, lambda: _bomb(gzip.compress, 6, 60 * mib)))
        out.append(_tar_case("xz_bomb", "tar", refused, lambda: _bomb(lzma.compress, 6, 60 * mib)))
        out.append(_tar_case("gzip_frame_over_cap", "tar", refused, lambda: _bomb(gzip.compress, 1, 80 * mib)))
    return out


def _link(name: str, kind: bytes) -> tuple[str, bytes, dict[str, object]]:
    return (name, b"", {"type": kind, "linkname": "/etc/passwd"})


def _with_coords(data: bytes) -> Callable[[], bytes]:
    return lambda: _tar_bytes(_avatar_entries(coords=data))


def _boxes(low: int, high: int) -> bytes:
    return pickle.dumps([(low, high, 3, 33)] * 2, protocol=2)


def _fix_coords(entries: list, frames: int) -> list:
    return [(n, pickle.dumps([(2, 30, 3, 33)] * frames) if n.endswith("coords.pkl") else d, a) for n, d, a in entries]


def _first_frame(data: bytes) -> bytes:
    return _tar_bytes([(n, data if n.endswith("full_imgs/00000000.png") else d, a) for n, d, a in _avatar_entries()])


def _later_frame(data: bytes) -> bytes:
    return _tar_bytes([(n, data if n.endswith("full_imgs/00000001.png") else d, a) for n, d, a in _avatar_entries()])


def _deep_json() -> bytes:
    return b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


def _declared_lie() -> bytes:
    """A header declaring a 1 TB frame (the data never follows)."""
    tar = bytearray(_tar_bytes([("av/full_imgs/00000000.png", b"x" * 512, {})]))
    tar[124:136] = b"\x80" + (10**12).to_bytes(11, "big")  # GNU base-256 size field
    checksum = sum(tar[:148]) + 8 * 32 + sum(tar[156:512])
    tar[148:156] = f"{checksum:06o}\0 ".encode()
    return bytes(tar)


def _pax_bomb() -> bytes:
    info = {"comment": "x" * (6 * 1024 * 1024)}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo("av/coords.pkl")
        member.pax_headers = info
        tar.addfile(member, io.BytesIO(b""))
    return gzip.compress(out.getvalue())


# --- malformed media through the other tasks ------------------------------------------------------------


def _media_case(name: str, task: str, field: str, data: bytes, suffix: str, expected: set[str]) -> Case:
    def make(work: Path) -> dict:
        path = work / "inputs" / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        payload: dict = {"task": task, "user_id": "attacker", field: path.as_uri()}
        if task == "preprocess_avatar":
            payload["avatar_id"] = name
        elif task == "render_emotion":
            payload["emotion"] = "happy"
        else:
            payload["image"] = _write_face(work)
        return payload

    return Case(name, "media", frozenset(expected), make)


def _write_face(work: Path) -> str:
    from tests.media import astronaut_bgr

    path = work / "inputs" / "face.png"
    if not path.exists():
        cv2.imwrite(str(path), astronaut_bgr(256))
    return path.as_uri()


def hostile_media() -> list[Case]:
    """Malformed videos, images and audio, through handlers.dispatch."""
    png = _frame_png()
    jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()
    mp4_head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00\x00\x10\x00moov" + b"\xff" * 64
    return [
        _media_case("video_garbage", "preprocess_avatar", "video", b"\x00garbage" * 500, ".mp4", {"invalid_video"}),
        _media_case("video_truncated_mp4", "preprocess_avatar", "video", mp4_head, ".mp4", {"invalid_video"}),
        _media_case("video_is_a_png", "preprocess_avatar", "video", png, ".mp4", {"invalid_video", "no_face"}),
        _media_case("video_empty", "preprocess_avatar", "video", b"", ".mp4", {"invalid_video"}),
        _media_case("image_garbage", "render_emotion", "image", b"\x00garbage" * 100, ".png", {"invalid_image"}),
        _media_case(
            "image_png_header_bomb", "render_emotion", "image", _png_declaring(60_000, 60_000), ".png",
            {"image_too_large", "invalid_image"},
        ),
        _media_case("image_truncated_jpeg", "render_emotion", "image", jpeg[:40], ".jpg", {"invalid_image"}),
        _media_case("audio_garbage", "generate_video", "audio", b"RIFF\x00\x00" * 100, ".wav", {"unsupported_audio"}),
    ]  # fmt: skip


# --- running a case as a worker would -----------------------------------------------------------------


def all_cases(big: bool = True) -> list[Case]:
    return [*hostile_tars(big), *hostile_media()]


def bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def run_case(case: Case, work: Path, runtime: object, address_space: int, file_size: int = GIB) -> Outcome:
    """Write the case's input, then dispatch its task in a capped child; the code is the task's error_code."""
    import handlers

    payload = case.make(work)

    def dispatch_code() -> str:
        result = handlers.dispatch(payload, runtime)  # type: ignore[arg-type]
        return result.get("error_code", "ok")

    return run_isolated(dispatch_code, address_space=address_space, file_size=file_size)
