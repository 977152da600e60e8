"""Model weights: the manifest, the resolver the serving path uses, and the ``fetch-weights`` build-time tool.

The serving path never downloads: ``resolve`` looks in the weights directories and verifies the file's
checksum (once per process per path, size and mtime); a missing file is an error naming the
``fetch-weights`` command. ``fetch-weights`` (run at image build time or into a Modal/RunPod volume)
downloads through ``engines.download`` (resume, retries, checksum, atomic rename).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.download import CHECKSUM_SUFFIX, download, hash_file
from engines.errors import EngineError
from engines.model_cache import hub_sha256, model_cache_view
from engines.table import LIVEPORTRAIT_LICENCE, NON_COMMERCIAL, SADTALKER_LICENCE, WAV2LIP256_LICENCE, EngineRow, rows

log = logging.getLogger(__name__)

MODAL_VOLUME = Path("/weights")
RUNPOD_VOLUME = Path("/runpod-volume")
MOUNT_DIRS = (MODAL_VOLUME, RUNPOD_VOLUME / "weights", RUNPOD_VOLUME)
# RunPod's model cache: the Hugging Face model an endpoint declares, on the worker's local disk in the
# Hugging Face cache layout (models--{org}--{name}/snapshots/{revision}/...); see model_cache_view.
RUNPOD_MODEL_CACHE = RUNPOD_VOLUME / "huggingface-cache" / "hub"

WAV2LIP_SOURCE = "https://github.com/Rudrabha/Wav2Lip#getting-the-weights"
# The official links are SharePoint pages (no direct download); this Hugging Face mirror serves the same
# bytes: the checksums below are the ones published for those files by several independent projects.
WAV2LIP_MIRROR = "https://huggingface.co/camenduru/Wav2Lip/resolve/main/checkpoints"


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file (which engine it serves: ``engines.table``)."""

    name: str  # what fetch-weights is given
    filename: str  # its name in a weights directory
    sha256: str | None  # None: not published; pinned at fetch time (sidecar) by the image build
    size: int | None  # bytes, when published
    licence: str
    commercial_use: bool
    source: str  # where the publisher lists it
    url: str  # direct download used by fetch-weights (override with --url / --base-url)


def _wav2lip96_entry(name: str, filename: str, sha256: str, size: int) -> WeightsFile:
    """One of the official 96-px Wav2Lip files (non-commercial), from the mirror."""
    url = f"{WAV2LIP_MIRROR}/{filename}"
    return WeightsFile(name, filename, sha256, size, NON_COMMERCIAL, False, WAV2LIP_SOURCE, url)


MANIFEST: tuple[WeightsFile, ...] = (
    _wav2lip96_entry(
        "wav2lip96_gan",
        "wav2lip_gan.pth",
        "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",
        435_801_865,
    ),
    _wav2lip96_entry(
        "wav2lip96", "wav2lip.pth", "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37", 435_807_851
    ),
    WeightsFile(
        # Published by LiveTalking as `wav2lip256.pth` in a Google Drive folder and on Quark, with no
        # checksum and no licence of its own (the repository's code is Apache-2.0; the model follows
        # Wav2Lip's architecture). LiveTalking renames it to `wav2lip.pth`; we keep the published name
        # so it cannot be mistaken for the official 96-px file.
        name="wav2lip256",
        filename="wav2lip256.pth",
        sha256=None,
        size=None,
        licence=WAV2LIP256_LICENCE,
        commercial_use=False,
        source="https://github.com/lipku/LiveTalking#2-quick-start",
        # The Drive file id of wav2lip256.pth in that folder, as users' install guides give it.
        url="https://drive.usercontent.google.com/download?id=1wu6XujFL9rF-0P2l44G6kpeapeY0cME7&export=download&confirm=t",
    ),
)

# MuseTalk 1.5: upstream's download_weights.sh layout under `musetalk/` (the engine's root). MIT for
# MuseTalk's code and weights (commercial use allowed), sd-vae-ft-mse MIT, whisper-tiny Apache-2.0,
# the face-parsing BiSeNet MIT. No checksums are published: fetch-weights pins them at fetch time.
MUSETALK_DIR = "musetalk"
MUSETALK_SOURCE = "https://github.com/TMElyralab/MuseTalk#download-weights"
_MUSETALK_REPOS = {  # folder -> (Hugging Face repository, licence)
    "musetalkV15": ("TMElyralab/MuseTalk", "MIT (TMElyralab/MuseTalk: code and weights, commercial use allowed)"),
    "sd-vae": ("stabilityai/sd-vae-ft-mse", "MIT (stabilityai/sd-vae-ft-mse)"),
    "whisper": ("openai/whisper-tiny", "Apache-2.0 (openai/whisper-tiny)"),
}
_MUSETALK_FILES = {  # name -> path under musetalk/ (the ones the engine needs: its row in engines.table)
    "musetalk_unet": "musetalkV15/unet.pth",
    "musetalk_unet_config": "musetalkV15/musetalk.json",
    "musetalk_vae": "sd-vae/diffusion_pytorch_model.bin",
    "musetalk_vae_config": "sd-vae/config.json",
    "musetalk_whisper": "whisper/pytorch_model.bin",
    "musetalk_whisper_config": "whisper/config.json",
    "musetalk_whisper_preprocessor": "whisper/preprocessor_config.json",
}


def _musetalk_entry(name: str, path: str) -> WeightsFile:
    folder, _, remote = path.partition("/")
    repo, licence = _MUSETALK_REPOS[folder]
    if folder == "musetalkV15":
        remote = path  # the MuseTalk repository keeps the folder
    url = f"https://huggingface.co/{repo}/resolve/main/{remote}"
    return WeightsFile(name, f"{MUSETALK_DIR}/{path}", None, None, licence, True, MUSETALK_SOURCE, url)


MANIFEST += (
    *(_musetalk_entry(name, path) for name, path in _MUSETALK_FILES.items()),
    WeightsFile(
        name="musetalk_face_parsing",  # optional: the blend mask comes from landmarks without it
        filename=f"{MUSETALK_DIR}/face-parse-bisent/79999_iter.pth",
        sha256=None,
        size=None,
        licence="MIT (zllrunning/face-parsing.PyTorch)",
        commercial_use=True,
        source=MUSETALK_SOURCE,
        url="https://drive.usercontent.google.com/download?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812&export=download&confirm=t",
    ),
)
# LivePortrait: the official Hugging Face layout under `liveportrait/` (the engine's root). MIT (code and weights;
# only upstream's InsightFace cropper is non-commercial, and the engine crops with our own landmarks instead).
# No checksums are published beside the files: fetch-weights pins them at fetch time.
LIVEPORTRAIT_DIR = "liveportrait"
LIVEPORTRAIT_URL = f"https://huggingface.co/KwaiVGI/LivePortrait/resolve/main/{LIVEPORTRAIT_DIR}"
_LIVEPORTRAIT_FILES = {
    "liveportrait_appearance": "base_models/appearance_feature_extractor.pth",
    "liveportrait_motion": "base_models/motion_extractor.pth",
    "liveportrait_warping": "base_models/warping_module.pth",
    "liveportrait_spade": "base_models/spade_generator.pth",
    "liveportrait_stitching": "retargeting_models/stitching_retargeting_module.pth",
}
MANIFEST += tuple(
    WeightsFile(
        name,
        f"{LIVEPORTRAIT_DIR}/{path}",
        None,
        None,
        LIVEPORTRAIT_LICENCE,
        True,
        "https://github.com/KwaiVGI/LivePortrait#2-download-pretrained-weights",
        f"{LIVEPORTRAIT_URL}/{path}",
    )
    for name, path in _LIVEPORTRAIT_FILES.items()
)
# SadTalker: the official release layout under `sadtalker/checkpoints/` (the engine's root is `sadtalker/`).
# Code Apache-2.0 ("we've removed the non-commercial restriction", upstream README); the checkpoints are release
# assets of the same repository with no licence text of their own. No checksums are published: pinned at fetch.
SADTALKER_DIR = "sadtalker"
SADTALKER_URL = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc"
_SADTALKER_FILES = {  # name -> file (the ones the engine needs at its default 256 px: its row in engines.table)
    "sadtalker_256": "SadTalker_V0.0.2_256.safetensors",
    "sadtalker_mapping_crop": "mapping_00229-model.pth.tar",
    "sadtalker_mapping_full": "mapping_00109-model.pth.tar",
    "sadtalker_512": "SadTalker_V0.0.2_512.safetensors",
}
MANIFEST += tuple(
    WeightsFile(
        name,
        f"{SADTALKER_DIR}/checkpoints/{file}",
        None,
        None,
        SADTALKER_LICENCE,
        True,
        "https://github.com/OpenTalker/SadTalker#-2-download-models",
        f"{SADTALKER_URL}/{file}",
    )
    for name, file in _SADTALKER_FILES.items()
)
BY_NAME = {w.name: w for w in MANIFEST}


def fetch_groups() -> dict[str, tuple[str, ...]]:
    """`fetch-weights musetalk` / `liveportrait` / `sadtalker`: every file of a set engine, optional ones too."""
    return {r.name: (*r.weights, *r.extra_weights) for r in rows() if r.weights_set}


def engine_weights(engine: str) -> tuple[str, ...]:
    """The manifest entries serving ``engine`` (its row in ``engines.table``): a set's files, or alternatives in
    order of preference; () for an engine without weights or a name the table does not hold."""
    return next((r.weights for r in rows() if r.name == engine), ())


def set_folder(engine: str) -> str | None:
    """The folder of an engine whose weights are a set of files, else None."""
    return next((r.weights_set for r in rows() if r.name == engine), None)


def engine_of(entry_name: str) -> EngineRow | None:
    """The row of the engine manifest entry ``entry_name`` belongs to."""
    return next((r for r in rows() if entry_name in (*r.weights, *r.extra_weights)), None)


@dataclass(frozen=True)
class ResolvedWeights:
    entry: WeightsFile
    path: Path
    verified: bool  # checksum matched (manifest or fetch-time sidecar); False when nothing pins it


def weights_entry(name: str) -> WeightsFile:
    if name not in BY_NAME:
        raise EngineError("unknown_weights", f"Unknown weights {name!r}: use one of {', '.join(BY_NAME)}.")
    return BY_NAME[name]


def search_dirs(weights_dir: Path | None) -> list[Path]:
    """Where weights are looked for: the configured dir, RunPod's model cache (local disk), then the Modal and
    RunPod volume mounts."""
    dirs = [Path(weights_dir)] if weights_dir else []
    cached = model_cache_view(RUNPOD_MODEL_CACHE, ((w.filename, w.url) for w in MANIFEST))
    return list(dict.fromkeys([*dirs, *([cached] if cached else []), *MOUNT_DIRS]))


def fetch_command(names: Iterable[str], weights_dir: Path | None) -> str:
    dest = f" --dest {weights_dir}" if weights_dir else ""
    return f"fetch-weights {' '.join(names)}{dest}"


def locate(entry: WeightsFile, dirs: Sequence[Path]) -> Path | None:
    """The first existing file for ``entry`` in ``dirs`` (no hashing)."""
    return next((d / entry.filename for d in dirs if (d / entry.filename).is_file()), None)


def find_engine_root(engine: str, weights_dir: Path | None) -> Path | None:
    """The first set folder (``musetalk/``, ``liveportrait/``...) holding every required file of ``engine``."""
    folder_name = set_folder(engine)
    for folder in search_dirs(weights_dir):
        if all((folder / BY_NAME[name].filename).is_file() for name in engine_weights(engine)):
            return folder / str(folder_name)
    return None


def find_musetalk_root(weights_dir: Path | None) -> Path | None:
    """The first ``musetalk/`` folder holding every required MuseTalk file (UNet, VAE, whisper weights)."""
    return find_engine_root("musetalk", weights_dir)


def find_for_engine(engine: str, weights_dir: Path | None) -> tuple[WeightsFile, Path] | None:
    """The preferred weights file present for ``engine``; for a set engine its main file, when the set is complete."""
    if set_folder(engine):
        root = find_engine_root(engine, weights_dir)
        main = BY_NAME[engine_weights(engine)[0]]  # the first file stands for the set
        return (main, root.parent / main.filename) if root else None
    dirs = search_dirs(weights_dir)
    for name in engine_weights(engine):
        path = locate(BY_NAME[name], dirs)
        if path is not None:
            return BY_NAME[name], path
    return None


def resolve(name: str, weights_dir: Path | None, verify: bool = True) -> ResolvedWeights:
    """The verified file for manifest entry ``name``; ``weights_missing`` / ``checksum_mismatch`` otherwise."""
    entry = weights_entry(name)
    dirs = search_dirs(weights_dir)
    path = locate(entry, dirs)
    if path is None:
        raise EngineError(
            "weights_missing",
            f"Weights `{entry.filename}` ({name}) not found in {', '.join(str(d) for d in dirs)}; "
            f"fetch them at build time with `{fetch_command([name], weights_dir)}`.",
        )
    return ResolvedWeights(entry, path, verify_file(entry, path) if verify else False)


# ---- checksums -------------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash once per process


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def sha256_file(path: Path) -> str:
    """The file's sha256, computed once per process for an unchanged file (path, size, mtime)."""
    key = _stat_key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = hash_file(path)
    return _DIGESTS[key]


def cached_sha256(path: Path) -> str | None:
    """The digest if this process already computed it for the unchanged file, without hashing."""
    try:
        return _DIGESTS.get(_stat_key(path))
    except OSError:
        return None


def pinned_sha256(entry: WeightsFile, path: Path) -> str | None:
    """The manifest checksum, else the one fetch-weights recorded beside the file, else (a file of a Hugging
    Face cache) the sha256 the Hub recorded for it."""
    if entry.sha256:
        return entry.sha256
    if path.is_symlink():
        return hub_sha256(path)
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if sidecar.is_file():
        fields = sidecar.read_text().split()  # empty when a fetch died while writing it: treated as unpinned
        return fields[0].lower() if fields else None
    return None


def verify_engine_files(entry: WeightsFile, path: Path) -> bool:
    """``verify_file`` for ``path``; for a file of a set engine, for every file of the set present beside it."""
    row = engine_of(entry.name)
    if row is None or not row.weights_set:
        return verify_file(entry, path)
    root = path.parents[len(Path(entry.filename).parts) - 1]  # the weights dir holding the set's folder
    siblings = [BY_NAME[name] for name in (*row.weights, *row.extra_weights)]
    return all([verify_file(w, root / w.filename) for w in siblings if (root / w.filename).is_file()])


def verify_file(entry: WeightsFile, path: Path) -> bool:
    """True when the file matches its pinned checksum, False when none is pinned; raises on a mismatch."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise EngineError(
            "checksum_mismatch",
            f"`{path}` is {size} bytes, expected {entry.size} for {entry.filename}: a partial or different "
            f"file; fetch it again with `{fetch_command([entry.name], path.parent)}`.",
        )
    expected = pinned_sha256(entry, path)
    if expected is None:
        log.warning("%s has no pinned checksum: loaded unverified (pin it with fetch-weights --sha256)", path)
        return False
    actual = sha256_file(path)
    if actual != expected:
        raise EngineError(
            "checksum_mismatch",
            f"`{path}` has sha256 {actual}, expected {expected} for {entry.filename}; "
            f"fetch it again with `{fetch_command([entry.name], path.parent)}`.",
        )
    return True


# ---- fetching (build time only) ---------------------------------------------------------------


def fetch_weights(
    names: Sequence[str],
    dest: Path,
    base_url: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    show_progress: bool = True,
) -> list[Path]:
    """Fetch manifest entries into ``dest`` (skipping files already there and verified)."""
    groups = fetch_groups()
    entries = [weights_entry(n) for group in names for n in groups.get(group, (group,))]
    if (url or sha256) and len(entries) != 1:
        raise EngineError("invalid_arguments", "`--url` and `--sha256` apply to exactly one weights name.")
    paths = []
    for entry in entries:
        target = Path(dest) / entry.filename
        expected = (sha256 or "").lower() or pinned_sha256(entry, target)
        if target.is_file() and expected and sha256_file(target) == expected:
            log.info("%s already present and verified", target)
        else:
            if expected is None:
                log.warning("%s has no published checksum: the one computed now is recorded beside it", entry.name)
            source = url or (f"{base_url.rstrip('/')}/{entry.filename}" if base_url else entry.url)
            download(source, target, expected, show_progress)
        paths.append(target)
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetch-weights",
        description="Download model weights into a weights directory (build time / volume fill).",
        epilog="\n".join(f"{w.name}: {w.filename} — {w.licence}" for w in MANIFEST),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help=f"weights to fetch: {', '.join([*fetch_groups(), *BY_NAME])}")
    parser.add_argument("--dest", type=Path, default=os.environ.get("WEIGHTS_DIR"), help="directory (env WEIGHTS_DIR)")
    parser.add_argument("--base-url", help="mirror holding the files under their file names")
    parser.add_argument("--url", help="exact URL (one name only)")
    parser.add_argument("--sha256", help="expected sha256 (one name only); pins entries the manifest leaves open")
    parser.add_argument("--list", action="store_true", help="list the manifest and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def fetch_weights_cli(argv: Sequence[str] | None = None) -> int:
    """Console script ``fetch-weights``: exit status 0 on success, 1 on failure, 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for w in MANIFEST:
            print(f"{w.name:15} {w.filename:16} sha256={w.sha256 or 'unpinned'}  {w.licence}")
        return 0
    if not args.names or args.dest is None:
        parser.error("give one or more weights names and --dest (or WEIGHTS_DIR)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        paths = fetch_weights(args.names, args.dest, args.base_url, args.url, args.sha256, not args.quiet)
    except EngineError as exc:
        print(f"fetch-weights: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
