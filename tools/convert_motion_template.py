"""Convert an upstream LivePortrait motion template (``.pkl``) into the safe ``.npz`` the workers read.

    python -m tools.convert_motion_template driving.pkl driving.npz

WARNING: this unpickles the input. Unpickling can run code: convert only templates you trust (ones you made
with LivePortrait yourself), on your own machine. The reader below accepts nothing but the plain containers
and numpy arrays an upstream template holds (a restricted unpickler), which stops the common attacks, but it
is no sandbox: the workers never unpickle anything, and this tool refuses to run inside a worker image
(``TALKING_HEAD_WORKER=1``, set by the images) or a RunPod / Modal container.

Upstream's template (``LivePortraitPipeline.make_motion_template``): ``{"n_frames", "output_fps", "motion":
[{"scale", "R" (or "R_d"), "exp", "t", "kp", "x_s"}, ...], "c_eyes_lst" (or "c_d_eyes_lst"), "c_lip_lst"
(or "c_d_lip_lst")}``, each value a float32 array with a leading batch axis of 1.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engines.liveportrait.driving import Motion
from engines.liveportrait.motion_file import load_motion, save_motion

WORKER_MARKERS = ("TALKING_HEAD_WORKER", "RUNPOD_POD_ID", "MODAL_TASK_ID")
MAX_TEMPLATE_BYTES = 512 * 1024 * 1024
# The globals an upstream template's pickle needs: numpy's array reconstruction under numpy 1 and 2 names.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles carry an array's bytes
}


class TemplateUnpickler(pickle.Unpickler):
    """Only numpy arrays, numbers, strings, lists and dicts come out; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a LivePortrait motion template")
        return super().find_class(module, name)


def inside_worker() -> str | None:
    """The environment variable that says this is a worker container, if any."""
    return next((name for name in WORKER_MARKERS if os.environ.get(name)), None)


def read_template(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if len(data) > MAX_TEMPLATE_BYTES:
        raise ValueError(f"{path} is over {MAX_TEMPLATE_BYTES} bytes")
    value = TemplateUnpickler(io.BytesIO(data)).load()
    if not isinstance(value, dict) or not isinstance(value.get("motion"), list) or not value["motion"]:
        raise ValueError(f"{path} is not a LivePortrait motion template (no `motion` list)")
    return value


def _rows(items: list[Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([np.asarray(item, np.float32).reshape(shape) for item in items]).astype(np.float32)


def to_motion(template: dict[str, Any]) -> Motion:
    frames = template["motion"]
    n = len(frames)

    def field(name: str, shape: tuple[int, ...], *aliases: str) -> np.ndarray:
        for key in (name, *aliases):
            if key in frames[0]:
                return _rows([f[key] for f in frames], key, shape)
        if name in ("kp", "x_s"):  # older templates lack them; the pipeline never reads them for a driving video
            return np.zeros((n, *shape), np.float32)
        raise ValueError(f"template frames have no `{name}`")

    eyes = template.get("c_eyes_lst", template.get("c_d_eyes_lst"))
    lips = template.get("c_lip_lst", template.get("c_d_lip_lst"))
    return Motion(
        scale=field("scale", (1,)),
        R=field("R", (3, 3), "R_d"),
        exp=field("exp", (21, 3)),
        t=field("t", (3,)),
        kp=field("kp", (21, 3)),
        x_s=field("x_s", (21, 3)),
        c_eyes=_rows(eyes, "c_eyes", (2,)) if eyes else np.zeros((n, 2), np.float32),
        c_lip=_rows(lips, "c_lip", (1,)) if lips else np.zeros((n, 1), np.float32),
        fps=float(template.get("output_fps", 25)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", type=Path, help="upstream LivePortrait motion template (.pkl) you trust")
    parser.add_argument("output", type=Path, help="the .npz to write (what `driving_video` accepts)")
    args = parser.parse_args(argv)
    marker = inside_worker()
    if marker:
        print(f"refusing to unpickle inside a worker ({marker} is set): convert templates on your own machine",
              file=sys.stderr)  # fmt: skip
        return 2
    print(f"WARNING: unpickling {args.template}: only convert motion templates you trust.", file=sys.stderr)
    try:
        motion = to_motion(read_template(args.template))
    except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError) as exc:
        print(f"cannot convert {args.template}: {exc}", file=sys.stderr)
        return 1
    save_motion(args.output, motion)
    load_motion(args.output, max_frames=len(motion))  # what the workers will accept, checked now
    print(f"{args.output}: {len(motion)} frames at {motion.fps:g} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
