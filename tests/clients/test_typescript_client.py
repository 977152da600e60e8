"""The TypeScript client (clients/typescript): its committed OpenAPI document and generated types are current,
its node tests pass against the `avatarctl serve` they start themselves, and its `npm pack` tarball installs
offline into a fresh project that compiles under strict settings and refuses a wrong emotion name. Node-dependent
tests are skipped, saying so, where node or the client's npm packages are missing (`.ci/run` installs them)."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.entrypoints.conftest import REPO_ROOT

CLIENT_DIR = REPO_ROOT / "clients" / "typescript"
EXPORT_SCRIPT = CLIENT_DIR / "scripts" / "export_openapi.py"


def node_ready() -> None:
    """Skip, naming what is missing, unless node and the client's npm packages are installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the TypeScript client's tests did not run (.ci/run installs them)")
    if not (CLIENT_DIR / "node_modules" / ".package-lock.json").exists():
        pytest.skip("clients/typescript/node_modules missing: run `make setup` (npm ci) to run the client's tests")


def test_the_committed_openapi_document_is_the_apps() -> None:
    committed = (CLIENT_DIR / "openapi.json").read_text()
    assert runpy.run_path(str(EXPORT_SCRIPT))["openapi_json"]() == committed, "stale: run `make client`"


def test_the_committed_types_are_generated_from_the_document() -> None:
    node_ready()
    checked = subprocess.run(
        ["npm", "run", "--silent", "check-types"], cwd=CLIENT_DIR, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, f"stale src/schema.ts: run `make client`\n{checked.stdout}{checked.stderr}"


def test_the_client_against_the_server_its_tests_start() -> None:
    """`npm test` starts its own `avatarctl serve` (scripts/test_server.py: temporary state, generated media)."""
    node_ready()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARCTL_")}
    env.update(AVATARCTL_PYTHON=sys.executable, PYTHONPATH=str(REPO_ROOT))
    ran = subprocess.run(["npm", "test"], cwd=CLIENT_DIR, env=env, capture_output=True, text=True, timeout=540)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-6000:]
    assert "# fail 0" in output and "# pass 13" in output, output[-3000:]


CONSUMER_TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "module": "NodeNext",
        "moduleResolution": "NodeNext",
        "lib": ["ES2022", "DOM"],
        "strict": True,
        "skipLibCheck": False,
        "noEmit": True,
        "types": [],
    },
    "include": ["*.ts"],
}
CONSUMER_CODE = """
import { AvatarClient, type Emotion, type EmotionRequest, type Job } from "@serverless-talking-head/client";

const client = new AvatarClient({ baseUrl: "http://127.0.0.1:8000", token: "t" });
const happy: Emotion = "happy";
const request: EmotionRequest = { user_id: "u1", image: "s3://bucket/face.png", emotion: happy };
export async function run(): Promise<Job> {
  return client.submitEmotion(request);
}
"""
WRONG_EMOTION = """
// @ts-expect-error: "joy" is not one of the seven emotions
export const joy: Emotion = "joy";
// @ts-expect-error: nor in a request
export const wrong: EmotionRequest = { user_id: "u1", image: "s3://bucket/face.png", emotion: "joy" };
"""


def runtime_dependencies() -> list[str]:
    """The client's runtime dependencies and theirs (not the dev tools), from its lockfile."""
    lock = json.loads((CLIENT_DIR / "package-lock.json").read_text())["packages"]
    return [path.removeprefix("node_modules/") for path, entry in lock.items() if path and not entry.get("dev")]


def test_the_packed_client_compiles_strictly_in_a_fresh_project_and_rejects_a_wrong_emotion(tmp_path: Path) -> None:
    node_ready()
    packed = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert packed.returncode == 0, packed.stderr[-3000:]
    (info,) = json.loads(packed.stdout[packed.stdout.index("[") :])
    files = {entry["path"] for entry in info["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/schema.d.ts", "package.json"} <= files, files
    assert not any(path.startswith(("test/", "build-test/", "src/", "node_modules/")) for path in files), files

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "package.json").write_text(json.dumps({"name": "consumer", "private": True, "type": "module"}))
    (consumer / "tsconfig.json").write_text(json.dumps(CONSUMER_TSCONFIG))
    # offline: the client from its tarball, its dependencies packed from the client's own node_modules
    tarballs = [str(tmp_path / info["filename"])]
    for dependency in runtime_dependencies():
        dep = subprocess.run(
            [
                "npm",
                "pack",
                "--json",
                "--pack-destination",
                str(tmp_path),
                str(CLIENT_DIR / "node_modules" / dependency),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dep.returncode == 0, dep.stderr[-2000:]
        tarballs.append(str(tmp_path / json.loads(dep.stdout[dep.stdout.index("[") :])[0]["filename"]))
    install = ["npm", "install", "--offline", "--no-audit", "--no-fund", *tarballs]
    installed = subprocess.run(install, cwd=consumer, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    tsc = [str(CLIENT_DIR / "node_modules" / ".bin" / "tsc"), "-p", "."]  # the client's pinned TypeScript

    (consumer / "consumer.ts").write_text(CONSUMER_CODE + WRONG_EMOTION)
    strict = subprocess.run(tsc, cwd=consumer, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 0, strict.stdout[-3000:]  # also: each @ts-expect-error above is a real error

    (consumer / "consumer.ts").write_text(CONSUMER_CODE + WRONG_EMOTION.replace("// @ts-expect-error", "//"))
    refused = subprocess.run(tsc, cwd=consumer, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and '"joy"' in refused.stdout, refused.stdout[-3000:]

    loaded = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            "const m = await import('@serverless-talking-head/client');console.log(typeof m.AvatarClient)",
        ],
        cwd=consumer,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "function", loaded.stderr
