"""Split packaging: the worker image installs the worker's set only, at constraints.txt's exact versions."""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.entrypoints.conftest import PYTHON, REPO_ROOT, child_env
from tests.entrypoints.test_images import DOCKERFILES, PYPROJECT, copy_sources, exported_requirements, instructions

EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CONSTRAINTS = REPO_ROOT / "constraints.txt"
# Import names of the orchestrator's own packages. FastAPI is not blocked: the RunPod SDK requires it.
ORCHESTRATOR_MODULES = {
    "typer": "typer",
    "sqlalchemy": "sqlalchemy",
    "alembic": "alembic",
    "fastapi": None,
    "fastapi-offline": "fastapi_offline",
    "uvicorn": "uvicorn",
    "python-multipart": "multipart",
    "prometheus-client": "prometheus_client",
    "scikit-image": "skimage",
    "serverless-talking-head": None,
}


def name_of(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def pinned() -> dict[str, str]:
    lines = [line.strip() for line in CONSTRAINTS.read_text().splitlines()]
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {name_of(name): version for name, version in pins.items()}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_worker_image_installs_nothing_of_the_orchestrator(dockerfile: Path) -> None:
    worker = {name_of(r) for r in exported_requirements(dockerfile)}
    orchestrator = {name_of(r) for r in EXTRAS["orchestrator"]} - {"serverless-talking-head"}
    assert {"fastapi", "sqlalchemy", "typer"} <= orchestrator
    assert not worker & orchestrator
    assert "runpod" in worker
    assert not {"orchestrator", "modal_app.py"} & set(copy_sources(dockerfile))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_images_install_at_the_constrained_versions(dockerfile: Path) -> None:
    runs = [args for keyword, args in instructions(dockerfile) if keyword == "RUN" and "pip install" in args]
    dependency_step = next(run for run in runs if "tomllib" in run)
    assert "-c constraints.txt" in dependency_step
    assert "constraints.txt" in shlex.split(next(a for k, a in instructions(dockerfile) if k == "COPY"))


def test_constraints_pin_every_declared_requirement_except_torch() -> None:
    pins = pinned()
    declared = PYPROJECT["project"]["dependencies"] + [r for name, reqs in EXTRAS.items() for r in reqs]
    names = {name_of(r) for r in declared} - {"serverless-talking-head", "torch"}
    assert names - pins.keys() == set(), "run `make lock` after changing pyproject.toml"
    assert "torch" not in pins  # TORCH_VERSION and the image's wheel index choose the torch build
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.!+-]*", version) for version in pins.values())


def test_the_orchestrator_modules_are_mapped() -> None:
    assert {name_of(r) for r in EXTRAS["orchestrator"]} <= ORCHESTRATOR_MODULES.keys()


def test_the_worker_runs_a_job_without_the_orchestrator_packages() -> None:
    blocked = sorted({"orchestrator", "modal"} | {m for m in ORCHESTRATOR_MODULES.values() if m})
    program = textwrap.dedent(f"""
        import runpy, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("not in the worker image: " + name)

        sys.meta_path.insert(0, Block())
        sys.argv = ["runpod_handler.py", "--test_input", '{{"input": {{"task": "health"}}}}']
        runpy.run_path("runpod_handler.py", run_name="__main__")
    """)
    ran = subprocess.run(
        [PYTHON, "-c", program], cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "completed successfully" in ran.stdout + ran.stderr
