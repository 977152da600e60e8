"""``latents.pt`` files that declare far more than they hold (issue 20): zero or overlapping strides, lists of
references, storages larger than their records, compressed records, the legacy format, oversized pickles.

``hostile_latents()`` maps a case name to a function writing the file; every case must be refused as
``invalid_avatar`` by ``storage.avatar.reader.read_latents`` for an avatar of ``FRAMES`` frames, with peak
memory within a few MB of the file's size. Used by the latents tests and bench/hostile.py's ``tensors`` class.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

FRAMES = 3
DECLARED = 60_000  # latents a hostile file claims: 60,000 x 32 KiB = 1.9 GiB once converted to float32
LATENT = (8, 32, 32)


def _save(value: object, **kwargs: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        torch.save(value, path, **kwargs)  # type: ignore[arg-type]

    return write


def _zero_stride() -> torch.Tensor:
    return torch.zeros(1, dtype=torch.float16).as_strided((DECLARED, *LATENT), (0, 0, 0, 0))


def _overlapping() -> torch.Tensor:
    storage = torch.zeros(DECLARED + 8192, dtype=torch.float16)
    return storage.as_strided((DECLARED, *LATENT), (1, 1, 1, 1))


def _rewritten(value: object, edit: Callable[[str, bytes], bytes], compression: int = zipfile.ZIP_STORED):
    """A torch.save zip of ``value`` with each record passed through ``edit(name, data)``."""

    def write(path: Path) -> None:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", compression) as out:
            for info in source.infolist():
                out.writestr(info.filename, edit(info.filename, source.read(info.filename)))

    return write


def _storage_declared_larger(name: str, data: bytes) -> bytes:
    """data.pkl's storage numel (BININT2 8192 for a (1, 8, 32, 32) tensor) made 500 million."""
    return data.replace(b"M\x00\x20t", b"J" + struct.pack("<i", 500_000_000) + b"t") if name.endswith(".pkl") else data


def _unchanged(name: str, data: bytes) -> bytes:
    return data


def hostile_latents() -> dict[str, Callable[[Path], None]]:
    one = torch.zeros(1, *LATENT, dtype=torch.float16)
    big = torch.zeros(2048, *LATENT, dtype=torch.float16)  # 32 MiB of zeros: compresses about 1000:1
    return {
        "zero_stride": _save([_zero_stride()]),  # 1.3 KB declaring 60,000 latents
        "zero_stride_alone": _save(_zero_stride()),
        "expanded_view": _save(torch.zeros(1, *LATENT, dtype=torch.float16).expand(DECLARED, *LATENT)),
        "overlapping_strides": _save([_overlapping()]),
        "references_to_one_tensor": _save([one] * DECLARED),
        "storage_larger_than_record": _rewritten(one, _storage_declared_larger),
        "compressed_records": _rewritten(big, _unchanged, zipfile.ZIP_DEFLATED),
        "legacy_format": _save(one, _use_new_zipfile_serialization=False),
        "pickle_over_frames": _save([torch.zeros(0, *LATENT) for _ in range(5000)]),
        "integer_latents": _save([torch.zeros(1, *LATENT, dtype=torch.int16)] * FRAMES),
        "wrong_shape": _save([torch.zeros(1, 4, 32, 64)] * FRAMES),
    }


def peak_rss_growth(case: Callable[[], object], warm_up: Callable[[], object] = lambda: None) -> tuple[str, float]:
    """Run ``case`` in a forked child: (its outcome, ``ok`` or the StorageError code, and how far its peak RSS
    rose above its RSS at the start, in MiB). ``warm_up`` runs first in the child (torch's first operation in
    a new process maps some 20 MB whatever it does); then the peak is reset (/proc/self/clear_refs)."""
    import multiprocessing
    import os

    from storage.errors import StorageError

    def child(conn: object) -> None:
        warm_up()
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        try:
            case()
            code = "ok"
        except StorageError as exc:
            code = exc.code
        except Exception as exc:  # a finding: reported by its type
            code = f"exception:{type(exc).__name__}"
        conn.send((code, (_status_kib("VmHWM") - before) / 1024))  # type: ignore[attr-defined]
        os._exit(0)

    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(sender,))
    proc.start()
    sender.close()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        proc.join()
    outcome = receiver.recv() if receiver.poll() else (f"crashed:{proc.exitcode}", 0.0)
    receiver.close()
    return outcome


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
