"""The Dockerfiles without Docker: what they COPY exists and survives .dockerignore, what they run works here."""

from __future__ import annotations

import fnmatch
import shlex
import subprocess
from pathlib import Path

import pytest
import tomllib

from tests.entrypoints.conftest import PYTHON, REPO_ROOT, child_env

DOCKERFILES = sorted((REPO_ROOT / "images").glob("Dockerfile.*"))
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _matches(path: str, pattern: str) -> bool:
    """Docker's rule, closely enough: `**/` matches any number of leading directories."""
    if pattern.startswith("**/"):
        parts = path.split("/")
        return any(fnmatch.fnmatch("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
    return fnmatch.fnmatch(path, pattern)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `path`: it or one of its parent directories matches a pattern."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_matches(prefix, pattern) for prefix in prefixes for pattern in patterns)


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for keyword, args in instructions(dockerfile):
        if keyword == "COPY" and "--from" not in args:
            sources.extend(shlex.split(args)[:-1])
    return sources


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


def test_copied_paths_exist_and_are_not_ignored(dockerfile: Path) -> None:
    patterns = dockerignore_patterns()
    sources = copy_sources(dockerfile)
    assert {"pyproject.toml", "README.md", "engines", "storage", "handlers", "realtime", "runpod_handler.py"} <= set(
        sources
    )
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
        assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for local_only in (".venv/bin/python", "var/store/x.tar", ".git/HEAD", "handlers/__pycache__/x.pyc"):
        assert ignored(local_only, patterns), local_only


def test_weights_are_opt_in_and_the_worker_is_the_command(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert ("ARG", 'WEIGHTS=""') in steps
    assert steps[-1] == ("CMD", '["python", "-u", "runpod_handler.py"]')
    base = next(args for keyword, args in steps if keyword == "FROM")
    assert "latest" not in base
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "fetch-weights $WEIGHTS --dest /weights" in runs
    assert "torch==${TORCH_VERSION}" in runs


def exported_requirements(dockerfile: Path) -> list[str]:
    """What the image's dependency step installs: its tomllib program, run here on this pyproject.toml."""
    run = next(args for keyword, args in instructions(dockerfile) if keyword == "RUN" and "tomllib" in args)
    tokens = shlex.split(run)
    program = tokens[tokens.index("-c") + 1]
    exported = subprocess.run([PYTHON, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return exported.stdout.split()


def test_the_dependency_export_lists_the_worker_dependencies(dockerfile: Path) -> None:
    project = PYPROJECT["project"]
    # MuseTalk wants CUDA; live sessions (aiortc) are served by both
    extras = ["worker", "realtime", "musetalk"] if dockerfile.name == "Dockerfile.cuda" else ["worker", "realtime"]
    expected = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    assert exported_requirements(dockerfile) == expected


def test_project_commands_the_images_run_work_here() -> None:
    assert PYPROJECT["project"]["scripts"]["fetch-weights"] == "engines.weights:fetch_weights_cli"
    fetch_weights = Path(PYTHON).with_name("fetch-weights")
    helped = subprocess.run([str(fetch_weights), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--dest" in helped.stdout

    worker = subprocess.run(
        [PYTHON, "runpod_handler.py", "--help"], cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert "--rp_serve_api" in worker.stdout and "--test_input" in worker.stdout
