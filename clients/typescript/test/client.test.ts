/**
 * The client against a live `avatarctl serve`: the one test/server.ts starts (temporary state, generated media),
 * or the one AVATARCTL_URL names. One test per /v1 route and per seed 004 route, plus seed 002's /generate.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";

import { AvatarApiError, AvatarClient, JobFailedError, WaitTimeoutError, newIdempotencyKey } from "../src/index.js";
import { startServer } from "./server.js";

const server = await startServer();
after(() => server.stop());
const { url: baseUrl, token, fixtures } = server;
const client = new AvatarClient({ baseUrl, token });
const fixture = async (name: string) => new Blob([await readFile(join(fixtures, name))]);
const fast = { initialDelayMs: 50, maxDelayMs: 500, timeoutMs: 120_000 };

test("GET /health: the verdict and seed 004's fields (waitForHealthy reads status and modelLoaded)", async () => {
  const health = await client.health();
  assert.equal(health.status, "healthy");
  assert.equal(health.modelLoaded, true);
  assert.equal(health.model_loaded, true);
  assert.equal(health.gpuAvailable, false);
  assert.equal(health.gpu_name, null);
});

test("the bearer token is required: a typed 401 with its error_code", async () => {
  const anonymous = new AvatarClient({ baseUrl });
  await assert.rejects(anonymous.listJobs(), (err: unknown) => {
    assert.ok(err instanceof AvatarApiError);
    assert.equal(err.status, 401);
    assert.equal(err.errorCode, "unauthorized");
    return true;
  });
});

test("POST /v1/uploads then POST /v1/emotions: submit, wait, idempotent replay, conflict", async () => {
  const upload = await client.upload(await fixture("portrait.png"), "ts-user", "image", "portrait.png");
  assert.match(upload.uri, /\/uploads\/ts-user\//);
  const key = newIdempotencyKey();
  const body = { user_id: "ts-user", image: upload.uri, emotions: ["happy" as const, "sad" as const] };
  const job = await client.submitEmotion(body, { idempotencyKey: key });
  assert.equal(job.task, "render_emotion");
  const updates: string[] = [];
  const done = await client.wait(job.id, { ...fast, onUpdate: (j) => updates.push(j.status) });
  assert.equal(done.status, "completed");
  assert.equal(updates.at(-1), "completed");
  const renders = (done.output as { renders: { emotion: string; uri: string }[] }).renders;
  assert.deepEqual(
    renders.map((r) => r.emotion),
    ["happy", "sad"],
  );
  const still = await fetch((renders[0] as unknown as { url: string }).url); // a signed URL: no token needed
  assert.equal(still.status, 200);
  assert.equal(still.headers.get("content-type"), "image/png");
  const replay = await client.submitEmotion(body, { idempotencyKey: key });
  assert.equal(replay.id, job.id);
  await assert.rejects(client.submitEmotion({ ...body, intensity: 0.2 }, { idempotencyKey: key }), (err: unknown) => {
    assert.ok(err instanceof AvatarApiError);
    assert.equal(err.status, 409);
    assert.equal(err.errorCode, "idempotency_key_reused");
    return true;
  });
});

test("POST /v1/emotions with bad input: a typed 422 naming the field", async () => {
  const bad = { user_id: "ts-user", image: "s3://bucket/face.png", emotion: "joy" } as never;
  await assert.rejects(client.submitEmotion(bad), (err: unknown) => {
    assert.ok(err instanceof AvatarApiError);
    assert.equal(err.status, 422);
    assert.equal(err.errorCode, "invalid_input");
    assert.match(err.message, /`emotion`/);
    return true;
  });
});

test("POST /v1/emotions without a face: wait throws JobFailedError with the job's error_code", async () => {
  const upload = await client.upload(await fixture("coffee.png"), "ts-user", "image", "coffee.png");
  const job = await client.submitEmotion({ user_id: "ts-user", image: upload.uri, emotion: "happy" });
  await assert.rejects(client.wait(job.id, fast), (err: unknown) => {
    assert.ok(err instanceof JobFailedError);
    assert.equal(err.errorCode, "no_face");
    assert.equal(err.job.status, "failed");
    return true;
  });
});

test("POST /v1/avatars, POST /v1/videos, GET /v1/jobs/{id}/events: an avatar speaks, followed live", async () => {
  const video = await client.upload(await fixture("train.mp4"), "ts-user", "training_video", "train.mp4");
  const avatar = await client.submitAvatar({ user_id: "ts-user", avatar_id: "ts-avatar", video: video.uri });
  const made = await client.wait(avatar.id, fast);
  assert.ok((made.output as { num_frames: number }).num_frames > 0);
  const clip = await client.submitVideo({ user_id: "ts-user", avatar_id: "ts-avatar", text: "Hello there.", stream: true });
  const events = [];
  for await (const event of client.events(clip.id)) events.push(event);
  const last = events.at(-1);
  assert.equal(last?.event, "completed");
  assert.equal(events[0].event, "progress");
  const segments = events.filter((e) => e.event === "segment");
  assert.ok(segments.length >= 1);
  assert.deepEqual(
    segments.map((e) => (e.event === "segment" ? e.data.index : -1)),
    segments.map((_, i) => i),
  );
  const done = await client.getJob(clip.id);
  assert.match((done.output as { video: { uri: string } }).video.uri, /\.mp4$/);
});

test("GET /v1/sessions/ice-servers, POST /v1/sessions, GET|DELETE /v1/sessions/{id}, /say, /interrupt", async () => {
  // node has no WebRTC peer: the session routes are checked through their refusals
  assert.ok(Array.isArray(await client.iceServers())); // ICE_SERVERS (none configured here)
  const offer = { type: "offer", sdp: "v=0" } as const;
  await assert.rejects(client.startSession({ user_id: "ts-user", offer } as never), (err: unknown) => {
    assert.ok(err instanceof AvatarApiError);
    assert.equal(err.status, 422);
    assert.match(err.message, /`avatar_id` or `image`/);
    return true;
  });
  // each call is made only when awaited: a rejection made earlier and awaited later is an unhandled rejection
  const missing = "0".repeat(32);
  const calls = [
    () => client.say(missing, { text: "Hi." }),
    () => client.endSession(missing),
    () => client.getSession(missing),
    () => client.interrupt(missing),
  ];
  for (const call of calls) {
    await assert.rejects(call(), (err: unknown) => {
      assert.ok(err instanceof AvatarApiError);
      assert.equal(err.status, 404);
      assert.equal(err.errorCode, "session_not_found");
      return true;
    });
  }
});

test("POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/jobs, DELETE /v1/jobs/{id}, wait's timeout", async () => {
  const job = await client.submit({ task: "health" });
  assert.equal((await client.getJob(job.id)).id, job.id);
  await client.wait(job.id, fast);
  const listed = await client.listJobs({ task: "health", status: "completed", limit: 10 });
  assert.ok(listed.some((j) => j.id === job.id));
  const finished = await client.cancel(job.id); // a finished job keeps its state
  assert.equal(finished.status, "completed");
  await assert.rejects(client.getJob("no-such-job"), (err: unknown) => {
    assert.ok(err instanceof AvatarApiError);
    assert.equal(err.errorCode, "job_not_found");
    return true;
  });

  // one local worker: a job queued behind a long one can be cancelled before it starts
  const portrait = await client.upload(await fixture("portrait.png"), "ts-user", "image", "portrait.png");
  const text = "This sentence keeps the only worker busy for a moment. ".repeat(4);
  const long = await client.submitVideo({ user_id: "ts-user", image: portrait.uri, text });
  const queued = await client.submit({ task: "health" });
  await assert.rejects(client.wait(queued.id, { timeoutMs: 1 }), WaitTimeoutError);
  const cancelled = await client.cancel(queued.id);
  assert.equal(cancelled.status, "cancelled");
  await assert.rejects(client.wait(queued.id, fast), (err: unknown) => {
    assert.ok(err instanceof JobFailedError);
    assert.equal(err.errorCode, "cancelled");
    return true;
  });
  await client.wait(long.id, fast);
});

test("seed 004 POST /render: no emotion renders neutral, with the fields LivePortraitClient reads", async () => {
  const render = await client.render(await fixture("portrait.png"));
  assert.equal(render.emotion, "neutral");
  assert.equal(render.intensity, 0.7);
  assert.ok(render.latencyMs > 0);
  assert.equal(render.gpuUsed, false);
  assert.ok(render.modelVersion);
  assert.equal(render.outputPath, render.output_path);
  assert.equal(render.width, 256);
  const happy = await client.render(await fixture("portrait.png"), { emotion: "happy", intensity: 0.8 });
  assert.equal(happy.emotion, "happy");
  assert.equal(happy.intensity, 0.8);
  const jpg = await client.render(await fixture("portrait.png"), { outputFormat: "jpg" });
  assert.match(jpg.filename, /\.jpg$/);
});

test("seed 004 POST /render/batch: an array in the requested order", async () => {
  const emotions = ["neutral", "happy", "sad"] as const;
  const results = await client.renderBatch(await fixture("portrait.png"), [...emotions], { intensity: 0.7 });
  assert.ok(Array.isArray(results));
  assert.deepEqual(
    results.map((r) => r.emotion),
    [...emotions],
  );
});

test("seed 004 GET and DELETE /output/{filename}", async () => {
  const render = await client.render(await fixture("portrait.png"), { emotion: "surprised" });
  const bytes = await client.downloadOutput(render.filename);
  assert.deepEqual([...bytes.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]); // a PNG
  await client.deleteOutput(render.filename);
  await assert.rejects(client.downloadOutput(render.filename), (err: unknown) => {
    assert.ok(err instanceof AvatarApiError);
    assert.equal(err.status, 404);
    assert.equal(err.errorCode, "output_not_found");
    return true;
  });
});

test("seed 004 GET /metrics: the seed's metric names", async () => {
  const metrics = await client.metrics();
  assert.match(metrics, /liveportrait_requests_total\{endpoint="\/render",status="200"\}/);
  assert.match(metrics, /liveportrait_request_duration_seconds/);
  assert.match(metrics, /liveportrait_errors_total/);
});

test("seed 002 POST /generate: image and audio in base64 give a video_url", async () => {
  const b64 = async (name: string) => (await readFile(join(fixtures, name))).toString("base64");
  const answer = await client.generate({
    image_b64: await b64("portrait.png"),
    audio_b64: await b64("speech.wav"),
  }); // no driver: auto (`driver: "sadtalker"` runs our SadTalker, which needs its weights)
  assert.equal(answer.status, "completed");
  assert.match(answer.video_url ?? "", /\.mp4$/);
  await assert.rejects(
    client.generate({ image_b64: await b64("portrait.png"), audio_url: "https://example.com/a.wav", audio_b64: "AAAA" }),
    (err: unknown) => {
      assert.ok(err instanceof AvatarApiError);
      assert.match(err.message, /`audio_url` or `audio_b64`/);
      return true;
    },
  );
});
