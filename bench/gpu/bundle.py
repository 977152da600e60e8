"""``make gpu-bundle``: what a lent GPU machine without network lacks for ``bench/gpu.sh``, in one folder.

    python -m bench.gpu.bundle [DEST=var/gpu-bundle] [--no-wheels]

- ``wheels/``: the run's imports that the GPU image does not have (``bundle_packages.txt``; the image's list
  is ``image_packages.txt``), at constraints.txt's versions, as CPython 3.12 manylinux x86_64 wheels, each
  one's requirements checked to be in the bundle or on the image;
- ``faces.json``: the face analysis of the run's portrait and avatars, recorded here with dlib (its 99 MB
  landmark model is what keeps ``face_recognition_models`` out: see ``faces.py``);
- ``manifest.json``: every file with its size, what was left out and why.

The random weights are not in it: ``bench/gpu.sh`` writes them there at start (MuseTalk alone is 3.4 GB).
At most ``BUDGET_MIB`` in all (the device tool carries 64 MiB with the checkout); over it, this fails.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

HERE = Path(__file__).resolve().parent
BUDGET_MIB = 60
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LEFT_OUT = {
    "face_recognition_models": "dlib's 68-landmark model is 99 MB: the run replays faces.json, recorded here",
    "dlib-bin": "no face analysis runs there (faces.json)",
    "boto3": "the run's store is file://; S3 is imported only for s3:// URIs",
    "google-cloud-storage": "the run's store is file://; GCS is imported only for gs:// URIs",
    "runpod": "the RunPod SDK is the entry point's, not the run's",
    "aiortc": "no WebRTC transport in the run (live streams are measured at the engine)",
}
# The environment the wheels' requirement markers are evaluated in (the GPU machine's).
MARKER_ENV = {"python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.3", "sys_platform": "linux"}
MARKER_ENV |= {"platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
MARKER_ENV |= {"platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def download(dest: Path) -> list[Path]:
    """The bundle's wheels for the GPU machine's Python, at constraints.txt's versions."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--dest", str(dest)]
    command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command += ["-c", str(REPO_ROOT / "constraints.txt"), *listed("bundle_packages.txt")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip download failed (offline?):\n{done.stderr[-2000:]}")
    return sorted(dest.glob("*.whl"))


def wheel_name(path: Path) -> str:
    return normal(path.name.split("-")[0])


def requirements(path: Path) -> list[str]:
    """The wheel's Requires-Dist names that apply on the GPU machine (no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(meta).decode().splitlines()
    names = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate(MARKER_ENV):
                names.append(normal(requirement.name))
    return names


def missing_requirements(wheels: list[Path]) -> list[str]:
    """Requirements of the bundled wheels that neither the bundle nor the GPU image provides."""
    present = {wheel_name(w) for w in wheels} | {normal(n) for n in listed("image_packages.txt")}
    return [f"{w.name} needs {name}" for w in wheels for name in requirements(w) if name not in present]


def record_faces(dest: Path) -> Path:
    from bench.gpu.faces import record, write_recording
    from bench.gpu.inputs import avatar_sizes
    from engines.face import load_face_analyzer

    return write_recording(dest, record(load_face_analyzer(), avatar_sizes()))


def make(dest: Path, wheels: bool = True) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    found = download(dest / "wheels") if wheels else sorted((dest / "wheels").glob("*.whl"))
    problems = missing_requirements(found)
    record_faces(dest)
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "files": {str(p.relative_to(dest)): p.stat().st_size for p in files},
        "bytes": sum(p.stat().st_size for p in files),
        "budget_bytes": BUDGET_MIB * 2**20,
        "python": PYTHON_VERSION,
        "platforms": PLATFORMS,
        "wheels_downloaded": wheels,
        "left_out": LEFT_OUT,
        "missing_requirements": problems,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path, nargs="?", default=REPO_ROOT / "var" / "gpu-bundle")
    parser.add_argument("--no-wheels", action="store_true", help="record faces.json only (offline)")
    args = parser.parse_args()
    manifest = make(args.dest, wheels=not args.no_wheels)
    for name, size in manifest["files"].items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    total = manifest["bytes"] / 2**20
    print(f"{total:8.2f} MiB  in {args.dest} (budget {BUDGET_MIB} MiB)")
    for name, why in LEFT_OUT.items():
        print(f"left out: {name}: {why}")
    if manifest["missing_requirements"]:
        raise SystemExit(
            "requirements neither bundled nor on the GPU image: " + "; ".join(manifest["missing_requirements"])
        )
    if total > BUDGET_MIB:
        raise SystemExit(f"the bundle is {total:.1f} MiB, over its {BUDGET_MIB} MiB budget")


if __name__ == "__main__":
    main()
