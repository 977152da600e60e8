"""Face-box pickles read by our own decoder of the opcode stream: no pickle machinery runs on a user's bytes.

``pickletools.genops`` lists opcodes without executing them; this module interprets the few that
LiveTalking, older genavatar versions and MuseTalk use for a list of ``(a, b, c, d)`` integer boxes:
plain ints, numpy integer scalars (``numpy.core`` and ``numpy._core`` paths), or one 2-D integer array
(``_reconstruct`` up to protocol 4, ``_frombuffer`` at protocol 5). Globals are never imported: each
allowed one is a tag that a handful of checked rules turn into numbers. Anything else is refused.

What a file may make the decoder do is bounded by what ``max_boxes`` boxes need (an avatar's reader passes
its frame count), not by the file's size: opcodes (64 per box), array elements and encoded bytes built in all
(a memoised buffer turned into arrays again and again is counted each time), lists and tuples, memo entries
(numbered in order, as picklers write them), stack depth, FRAME opcodes (as a pickler writes them).
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_PICKLE_BYTES = 16 * 1024 * 1024
MAX_BOXES = 30_000  # 20 minutes at 25 fps; an avatar's reader passes its frame count instead
MAX_MARK_DEPTH = 32
MAX_NESTING = 4  # the box list, a box, a reduce's arguments, a shape inside them
MAX_STACK = 2048  # pickle batches appends by 1000: a box list never needs a deeper stack
MAX_INT_BITS = 63
# Budgets scale with the boxes allowed (the avatar's frame count), so what a file may make the decoder do
# and build is bounded by what that many boxes need, whatever the file's size:
CONTAINERS_PER_BOX = 10  # protocol 2 spends nine tuples on a box of numpy scalars
MEMO_PER_BOX = 24  # and 21 memo entries (kept as a list: 8 bytes each)
ELEMENTS_PER_BOX = 4  # array elements built in all (arrays, numpy scalars): each box is four numbers
OPS_PER_BOX = 64  # the most opcodes a writer spends on one box is 59 (protocol 2, numpy scalars)
BUDGET_SLACK = 256  # headers, globals, dtypes, shapes
FRAME_BYTES = 64 * 1024  # pickle's frame size target (protocol 4 and 5)

SCALAR = "scalar"
DTYPE = "dtype"
NDARRAY = "ndarray"
RECONSTRUCT = "reconstruct"
FROMBUFFER = "frombuffer"
ENCODE = "encode"
GLOBALS = {
    ("numpy.core.multiarray", "scalar"): SCALAR,
    ("numpy._core.multiarray", "scalar"): SCALAR,
    ("numpy", "dtype"): DTYPE,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): FROMBUFFER,
    ("_codecs", "encode"): ENCODE,
}
INT_DTYPE_CODES = {f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8)}
BYTE_ORDERS = {("<",), (">",), ("|",), ("=",)}  # as state[1:2]


class BoxPickleError(ValueError):
    """The bytes are not a box list this decoder accepts; the message says why."""


@dataclass(frozen=True)
class _Global:
    tag: str


@dataclass
class _DType:
    code: str  # "i8", "u4", ...
    order: str = "="
    built: bool = False  # BUILD sets the byte order once

    def numpy(self) -> np.dtype:
        return np.dtype(("|" if self.code[1] == "1" else self.order) + self.code)


@dataclass
class _ArrayShell:
    """``_reconstruct(ndarray, (0,), b'b')`` before BUILD fills it."""

    array: np.ndarray | None = None


_MARK = object()


@dataclass
class _Budget:
    """What one decode may still do and build; each ``spend_*`` refuses once a budget is exhausted."""

    max_boxes: int
    ops: int = 0
    elements: int = 0

    def __post_init__(self) -> None:
        self.ops = OPS_PER_BOX * self.max_boxes + BUDGET_SLACK
        self.elements = ELEMENTS_PER_BOX * self.max_boxes + BUDGET_SLACK
        self.containers = CONTAINERS_PER_BOX * self.max_boxes + BUDGET_SLACK
        self.memo = MEMO_PER_BOX * self.max_boxes + BUDGET_SLACK
        self.buffer_bytes = 8 * ELEMENTS_PER_BOX * self.max_boxes + 16 * BUDGET_SLACK  # int64 elements at most

    def spend_op(self) -> None:
        self.ops -= 1
        if self.ops < 0:
            raise BoxPickleError(f"more opcodes than {self.max_boxes} boxes need (a work bomb)")

    def spend_bytes(self, count: int) -> None:
        """Called before a buffer of ``count`` bytes is made from text (``_codecs.encode``)."""
        self.buffer_bytes -= count
        if self.buffer_bytes < 0:
            raise BoxPickleError(f"encodes more bytes than {self.max_boxes} boxes hold (a build bomb)")

    def spend_elements(self, count: int) -> None:
        """Called before an array or scalar of ``count`` elements is made, never after."""
        self.elements -= count
        if self.elements < 0:
            raise BoxPickleError(f"builds more array elements than {self.max_boxes} boxes hold (a build bomb)")


@dataclass
class _Machine:
    max_boxes: int
    budget: _Budget
    stack: list[Any] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    memo: list[Any] = field(default_factory=list)  # picklers number memo entries 0, 1, 2, ... in order
    depths: dict[int, int] = field(default_factory=dict)  # id of each list and tuple built -> its nesting depth
    inner_lists: set[int] = field(default_factory=set)  # lists inside another container: plain values only
    built: list[Any] = field(default_factory=list)  # keeps every container alive, so no id is reused

    def container(self, value: Any, items: list[Any]) -> Any:
        """Record a new list or tuple holding ``items``; refuse nesting no box list needs."""
        if len(self.built) >= self.budget.containers:
            raise BoxPickleError(f"more than {self.budget.containers} lists and tuples")
        self.depths[id(value)] = self._depth_holding(0, items)
        self.built.append(value)
        return value

    def _depth_holding(self, depth: int, items: list[Any]) -> int:
        for item in items:
            if isinstance(item, (list, tuple)):
                depth = max(depth, 1 + self.depths[id(item)])
                if isinstance(item, list):
                    self.inner_lists.add(id(item))
        depth = max(depth, 1)
        if depth > MAX_NESTING:
            raise BoxPickleError(f"nested deeper than {MAX_NESTING} levels")
        return depth

    def pop(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise BoxPickleError("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise BoxPickleError("no MARK to pop to")
        start = self.marks.pop()
        items, self.stack[start:] = self.stack[start:], []
        return items

    def top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise BoxPickleError("empty stack")
        return self.stack[-1]

    def mark(self) -> None:
        if len(self.marks) >= MAX_MARK_DEPTH:
            raise BoxPickleError(f"nested deeper than {MAX_MARK_DEPTH} marks")
        self.marks.append(len(self.stack))

    def put(self, index: int) -> None:
        if not 0 <= index <= len(self.memo) or index >= self.budget.memo:
            raise BoxPickleError(f"memo index {index} out of order or over {self.budget.memo} entries")
        if index == len(self.memo):
            self.memo.append(self.top())
        else:
            self.memo[index] = self.top()

    def get(self, index: int) -> None:
        if not 0 <= index < len(self.memo):
            raise BoxPickleError(f"memo entry {index} was never stored")
        self.push(self.memo[index])

    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise BoxPickleError(f"more than {MAX_STACK} values on the stack")
        self.stack.append(value)

    def extend(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, list):
            raise BoxPickleError(f"append to a {type(target).__name__}")
        if len(target) + len(items) > max(self.max_boxes, 4):  # the box list, or a box of four values
            raise BoxPickleError(f"more than {self.max_boxes} entries")
        if id(target) in self.inner_lists and any(isinstance(item, (list, tuple)) for item in items):
            raise BoxPickleError("a list inside another takes only plain values")
        self.depths[id(target)] = self._depth_holding(self.depths[id(target)], items)
        target.extend(items)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BoxPickleError(f"expected an integer, found {type(value).__name__}")
    if value.bit_length() > MAX_INT_BITS:
        raise BoxPickleError("integer out of range")
    return value


def _global(module: Any, name: Any) -> _Global:
    tag = GLOBALS.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
    if tag is None:
        raise BoxPickleError(f"global {module}.{name} is not allowed")
    return _Global(tag)


def _dtype(args: Any) -> _DType:
    if not (isinstance(args, tuple) and len(args) == 3 and isinstance(args[0], str)):
        raise BoxPickleError("unexpected numpy.dtype arguments")
    code = args[0].lstrip("<>|=")
    if code not in INT_DTYPE_CODES or args[1] not in (False, 0) or args[2] not in (True, 1):
        raise BoxPickleError(f"dtype {args[0]!r} is not a plain integer type")
    return _DType(code)


def _array(raw: Any, dtype: Any, shape: Any, fortran: bool, budget: _Budget) -> np.ndarray:
    if not isinstance(dtype, _DType) or not isinstance(raw, bytes):
        raise BoxPickleError("an array must hold integer data given as bytes")
    if not (isinstance(shape, tuple) and 1 <= len(shape) <= 2 and all(_int(n) >= 0 for n in shape)):
        raise BoxPickleError(f"array shape {shape!r} is not 1-D or 2-D")
    count = shape[0] * (shape[1] if len(shape) == 2 else 1)
    np_dtype = dtype.numpy()
    if len(raw) != count * np_dtype.itemsize:
        raise BoxPickleError(f"array data of {len(raw)} bytes does not match shape {shape} of {np_dtype}")
    budget.spend_elements(count)  # a memoised buffer may be referenced again and again: count what is built
    values = np.frombuffer(raw, dtype=np_dtype).astype(np.int64)
    return values.reshape(shape, order="F" if fortran else "C")


def _reduce(func: Any, args: Any, budget: _Budget) -> Any:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise BoxPickleError("REDUCE of something that is not an allowed global")
    if func.tag == DTYPE:
        return _dtype(args)
    if func.tag == SCALAR and len(args) == 2:
        return int(_array(args[1], args[0], (1,), False, budget)[0])
    if func.tag == ENCODE and len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        budget.spend_bytes(len(args[0]))  # a memoised text may be encoded again and again
        return args[0].encode("latin-1")
    if func.tag == RECONSTRUCT and len(args) == 3 and args[0] == _Global(NDARRAY):
        return _ArrayShell()
    if func.tag == FROMBUFFER and len(args) == 4 and args[3] in ("C", "F"):
        return _array(args[0], args[1], args[2], args[3] == "F", budget)
    raise BoxPickleError(f"REDUCE of {func.tag} with these arguments is not allowed")


def _build(target: Any, state: Any, budget: _Budget) -> None:
    if isinstance(target, _DType) and not target.built and isinstance(state, tuple) and state[1:2] in BYTE_ORDERS:
        target.order, target.built = state[1], True
        return
    if isinstance(target, _ArrayShell) and target.array is None and isinstance(state, tuple) and len(state) == 5:
        _version, shape, dtype, fortran, raw = state
        if fortran not in (True, False, 0, 1):
            raise BoxPickleError("unexpected array order flag")
        target.array = _array(raw, dtype, shape, bool(fortran), budget)
        return
    raise BoxPickleError(f"BUILD of a {type(target).__name__} is not allowed")


def _op_table(m: _Machine) -> dict[str, Callable[[Any], None]]:
    def tuple_of(n: int) -> Callable[[Any], None]:
        def build_tuple(_: Any) -> None:
            items = list(reversed([m.pop() for _ in range(n)]))
            m.push(m.container(tuple(items), items))

        return build_tuple

    def append(_: Any) -> None:
        item = m.pop()
        m.extend(m.top(), [item])

    def appends(_: Any) -> None:
        items = m.pop_mark()
        m.extend(m.top(), items)

    def stack_global(_: Any) -> None:
        name, module = m.pop(), m.pop()
        m.push(_global(module, name))

    def reduce(_: Any) -> None:
        args, func = m.pop(), m.pop()
        m.push(_reduce(func, args, m.budget))

    def build(_: Any) -> None:
        state = m.pop()
        _build(m.top(), state, m.budget)

    table: dict[str, Callable[[Any], None]] = {
        "PROTO": lambda _: None,
        "FRAME": lambda _: None,
        "MARK": lambda _: m.mark(),
        "NONE": lambda _: m.push(None),
        "NEWTRUE": lambda _: m.push(True),
        "NEWFALSE": lambda _: m.push(False),
        "EMPTY_LIST": lambda _: m.push(m.container([], [])),
        "EMPTY_TUPLE": lambda _: m.push(m.container((), [])),
        "LIST": lambda _: m.push(m.container(items := m.pop_mark(), items)),
        "TUPLE": lambda _: m.push(m.container(tuple(items := m.pop_mark()), items)),
        "TUPLE1": tuple_of(1),
        "TUPLE2": tuple_of(2),
        "TUPLE3": tuple_of(3),
        "APPEND": append,
        "APPENDS": appends,
        "MEMOIZE": lambda _: m.put(len(m.memo)),
        "GLOBAL": lambda arg: m.push(_global(*_split_global(arg))),
        "STACK_GLOBAL": stack_global,
        "REDUCE": reduce,
        "BUILD": build,
    }
    for name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
        table[name] = lambda arg: m.push(arg if isinstance(arg, bool) else _int(arg))
    for name in ("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
        table[name] = m.push
    for name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
        table[name] = lambda arg: m.push(bytes(arg))
    for name in ("PUT", "BINPUT", "LONG_BINPUT"):
        table[name] = lambda arg: m.put(_int(arg))
    for name in ("GET", "BINGET", "LONG_BINGET"):
        table[name] = lambda arg: m.get(_int(arg))
    return table


def _split_global(arg: Any) -> tuple[str, str]:
    module, sep, name = str(arg).partition(" ")
    if not sep:
        raise BoxPickleError(f"malformed GLOBAL {arg!r}")
    return module, name


def _check_framing(name: str, pos: int, frames: int, data_bytes: int) -> int:
    """PROTO only first; FRAMEs no more often than a pickler writes them (one per 64 KiB, plus one before each
    large buffer): floods of these no-op opcodes are refused. Returns the frames seen."""
    if name == "PROTO" and pos != 0:
        raise BoxPickleError("PROTO after the first opcode")
    if name == "FRAME":
        frames += 1
        if frames > 2 + 2 * data_bytes // FRAME_BYTES:
            raise BoxPickleError(f"more FRAME opcodes than {data_bytes} bytes need")
    return frames


def _run(data: bytes, max_boxes: int) -> Any:
    machine = _Machine(max_boxes, _Budget(max_boxes))
    table = _op_table(machine)
    frames = 0
    for opcode, arg, pos in pickletools.genops(io.BytesIO(data)):
        machine.budget.spend_op()
        frames = _check_framing(opcode.name, pos, frames, len(data))
        if opcode.name == "STOP":
            if len(machine.stack) != 1 or machine.marks:
                raise BoxPickleError("STOP with a malformed stack")
            return machine.stack[0]
        handler = table.get(opcode.name)
        if handler is None:
            raise BoxPickleError(f"opcode {opcode.name} is not allowed")
        handler(arg)
    raise BoxPickleError("no STOP opcode")


def _as_box_array(value: Any, max_boxes: int) -> np.ndarray:
    if isinstance(value, _ArrayShell):
        value = value.array
    if isinstance(value, np.ndarray):
        if value.ndim != 2 or value.shape[1] != 4:
            raise BoxPickleError(f"array of shape {value.shape}, expected (N, 4)")
        return np.ascontiguousarray(value, dtype=np.int64)
    if not isinstance(value, (list, tuple)):
        raise BoxPickleError(f"holds a {type(value).__name__}, expected a list of boxes")
    if len(value) > max_boxes:
        raise BoxPickleError(f"more than {max_boxes} entries")
    boxes = np.empty((len(value), 4), dtype=np.int64)
    for i, box in enumerate(value):
        if isinstance(box, _ArrayShell):
            box = box.array
        if isinstance(box, np.ndarray) and box.shape == (4,):
            boxes[i] = box
        elif isinstance(box, (list, tuple)) and len(box) == 4:
            boxes[i] = [_int(v) for v in box]
        else:
            raise BoxPickleError(f"entry {i} is not 4 integers")
    return boxes


def read_boxes_pickle(data: bytes, *, max_bytes: int = MAX_PICKLE_BYTES, max_boxes: int = MAX_BOXES) -> np.ndarray:
    """The (N, 4) int64 boxes pickled in ``data``; BoxPickleError for anything but the accepted shapes."""
    if len(data) > max_bytes:
        raise BoxPickleError(f"{len(data)} bytes, over the limit of {max_bytes}")
    try:
        value = _run(data, max_boxes)
    except BoxPickleError:
        raise
    except Exception as exc:  # genops' own parse errors: truncated, unknown opcode, bad text
        raise BoxPickleError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    return _as_box_array(value, max_boxes)
