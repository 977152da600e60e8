"""Imports limited to the GPU image's packages plus the bundle's (``bench/gpu.sh --image-guard``).

Python imports ``sitecustomize`` at start-up from the first folder of sys.path that has one; ``bench/gpu.sh
--image-guard`` puts this folder first on PYTHONPATH (children inherit it) and sets ``GPU_IMAGE_GUARD=1``.
A module whose distributions are all outside ``image_packages.txt``, ``bundle_packages.txt`` and the project
itself is refused with the package named, so a CPU run proves that the bundle holds everything the GPU
run imports. Versions are not emulated, names are.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

LISTS = ("image_packages.txt", "bundle_packages.txt")
ALWAYS = ("serverless-talking-head", "pip", "setuptools", "wheel")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(name: str) -> list[str]:
    """The distribution's requirements as installed here (extras left out); none when it is not installed."""
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append(_normal(requirement.name))
    return found


def allowed_distributions(folder: Path) -> set[str]:
    """The listed distributions and, transitively, what their versions installed here require: the image's own
    versions bring their own requirements along (e.g. a newer huggingface-hub here needs a package the image's
    older one does not)."""
    names = set()
    for listed in LISTS:
        lines = (folder / listed).read_text().splitlines()
        names.update(_normal(line.strip()) for line in lines if line.strip() and not line.startswith("#"))
    pending = list(names)
    while pending:
        for required in _requirements(pending.pop()):
            if required not in names:
                names.add(required)
                pending.append(required)
    return names | {_normal(name) for name in ALWAYS}


class ImageGuard:
    """A meta path finder that refuses the top-level modules of distributions the GPU machine will not have."""

    def __init__(self, allowed: set[str]) -> None:
        self.blocked = {
            module: sorted(dists)
            for module, dists in metadata.packages_distributions().items()
            if not any(_normal(d) in allowed for d in dists)
        }

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        top = fullname.partition(".")[0]
        if top in self.blocked:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} on the GPU machine: {', '.join(self.blocked[top])} is neither in "
                "its image (bench/gpu/image_packages.txt) nor in the bundle (bench/gpu/bundle_packages.txt)",
                name=fullname,
            )


if os.environ.get("GPU_IMAGE_GUARD") == "1":
    sys.meta_path.insert(0, ImageGuard(allowed_distributions(Path(__file__).resolve().parent.parent)))
