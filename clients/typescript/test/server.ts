/**
 * The server the tests run against: the one named by AVATARCTL_URL (with AVATARCTL_TOKEN and AVATARCTL_FIXTURES),
 * else a fresh `avatarctl serve` with temporary state, started by scripts/test_server.py with the project's Python
 * (AVATARCTL_PYTHON, else the repository's .venv, else python3) and stopped when the tests end.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export interface TestServer {
  url: string;
  token: string | undefined;
  /** A folder with portrait.png, coffee.png, speech.wav and train.mp4. */
  fixtures: string;
  stop(): Promise<void>;
}

const CLIENT_DIR = fileURLToPath(new URL("../../", import.meta.url)); // build-test/test/ -> clients/typescript/
const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

function python(): string {
  const venv = `${REPO_ROOT}.venv/bin/python`;
  return process.env.AVATARCTL_PYTHON ?? (existsSync(venv) ? venv : "python3");
}

function stopped(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.stdin?.end();
  });
}

export async function startServer(): Promise<TestServer> {
  const given = process.env.AVATARCTL_URL;
  if (given) {
    const fixtures = process.env.AVATARCTL_FIXTURES ?? ".";
    return { url: given, token: process.env.AVATARCTL_TOKEN, fixtures, stop: async () => {} };
  }
  const child = spawn(python(), [`${CLIENT_DIR}scripts/test_server.py`], {
    cwd: REPO_ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once("line", resolve);
    child.once("exit", (code) => reject(new Error(`scripts/test_server.py exited with ${code} before serving`)));
  });
  const { url, token, fixtures } = JSON.parse(first) as { url: string; token: string; fixtures: string };
  return { url, token, fixtures, stop: () => stopped(child) };
}
