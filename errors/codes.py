"""The table of error codes: each code a job or an API answer may carry, what it means, the HTTP status the API
answers when it refuses a request with it, and whether the same request may succeed if sent again later.

A job's failure carries its code in the job (``error_code``), whatever the status below; the status is what an
API route answers when it raises the code itself (a route may name another one where its context decides, e.g.
a seed route answering a failed job). ``tests/test_error_codes.py`` checks that every code raised anywhere in
the source is here, and that the README's list and the OpenAPI document are generated from this table.
"""

from __future__ import annotations

from typing import NamedTuple


class ErrorCode(NamedTuple):
    http_status: int
    retryable: bool
    meaning: str


# code, HTTP status, retryable (y/n), meaning: one line each, sorted by code.
_TABLE = """
access_denied 502 n The store refused the credentials or the object's permissions.
already_answered 409 n The live session has its SDP answer already.
ambiguous_job_id 400 n A job id prefix matches several jobs.
answer_too_large 422 n The SDP answer is over the size limit.
audio_too_long 422 n The audio is longer than the worker accepts.
audio_unsupported 501 n This live worker does not play audio files.
avatar_not_found 404 n No preprocessed avatar with this id in the store.
avatar_required 422 n No avatar for the session: send one, or configure LIVETALKING_AVATAR_ID / LIVETALKING_IMAGE.
backend_closed 503 y The local backend is shutting down and takes no new jobs.
backend_unavailable 503 y The backend did not answer (status, cancel or health) after its retries.
cancelled 409 n The job was cancelled (by request, or its worker stopped it).
checksum_mismatch 502 y A downloaded file's checksum is not the expected one.
control_lost 503 y The live worker lost its control URL for too long.
control_refused 502 n The orchestrator refused a live worker's control call.
did_auth_failed 502 n D-ID refused the API key.
did_failed 502 n D-ID failed the talk.
did_insufficient_credits 502 n The D-ID account has no credits left.
did_invalid_request 422 n D-ID refused the request's content.
did_needs_signed_urls 422 n D-ID needs URLs it can fetch: the store must sign its URLs.
did_not_configured 503 n No D-ID API key is configured on the worker.
did_provider_error 502 y D-ID failed the render.
did_rate_limited 429 y D-ID is rate limiting the account (after retries).
did_rejected 422 n D-ID rejected the talk's content.
did_timeout 504 y D-ID did not finish in time.
did_unreachable 502 y D-ID could not be reached.
download_failed 502 y A file could not be downloaded.
empty_audio 422 n The audio holds no samples.
empty_speech 422 n There is nothing to say (no text, no audio).
empty_text 422 n The text to speak is empty.
empty_video 422 n No frame was rendered.
encode_failed 500 y The video or image could not be encoded.
engine_unavailable 422 n The engine asked for cannot run on this worker (weights, packages or device missing).
face_lost 422 n The face was lost in too many frames of the video.
face_not_found 422 n No face was found where one was expected.
forbidden 403 n The token may not act for this user.
idempotency_conflict 409 y A request with this idempotency key is being handled.
idempotency_key_reused 409 n The idempotency key was used for a different request.
image_too_large 422 n The image is over the size limit.
internal_error 500 y An unexpected failure; the logs hold the traceback.
interrupted 409 n The speech was interrupted before all of it was scheduled.
invalid_answer 422 n The SDP answer is not usable.
invalid_archive 422 n The avatar archive is not one this project writes.
invalid_arguments 400 n The command's arguments are inconsistent.
invalid_audio 422 n The audio cannot be decoded or used.
invalid_avatar 422 n The avatar's files are missing or inconsistent.
invalid_avatar_id 422 n The avatar id is not a safe name.
invalid_checkpoint 500 n A weights file is not the one the engine expects.
invalid_cursor 400 n The page cursor is not one this API gave.
invalid_data_uri 422 n The data: URI is malformed.
invalid_filename 400 n The file name is not one the route accepts.
invalid_filter 400 n A list filter names an unknown value.
invalid_format 422 n The output format is not supported.
invalid_frame 422 n A frame has the wrong shape or type.
invalid_idempotency_key 400 n The idempotency key is empty or too long.
invalid_image 422 n The image cannot be decoded or used.
invalid_input 422 n The request does not match its schema.
invalid_intensity 422 n The emotion intensity is out of range.
invalid_key 400 n The storage key is unsafe or malformed.
invalid_message 422 n The data-channel message is not text or JSON.
invalid_motion_template 422 n The motion template is not a safe .npz this project reads.
invalid_pads 422 n The face padding values are out of range.
invalid_precision 422 n The precision is not one the engine supports on this device.
invalid_sdp 422 n The SDP offer is not a usable WebRTC session description.
invalid_signature 403 n The file URL's signature does not match.
invalid_uri 400 n The URI is malformed.
invalid_video 422 n The video cannot be decoded or used.
invalid_video_size 422 n The output video's size is not supported.
invalid_webhook 400 n The webhook body is not a RunPod job.
job_not_found 404 n No job with this id.
llm_failed 502 y The configured LLM answered an error or an answer without a message.
llm_not_configured 503 n `chat` needs an LLM: LLM_BASE_URL and LLM_MODEL are not set.
llm_unavailable 503 y The configured LLM did not answer.
message_too_large 422 n The data-channel message is over the size limit.
method_not_allowed 405 n The route does not take this HTTP method.
missing_task 422 n The payload names no task.
modal_rejected 502 n Modal refused the call.
modal_unavailable 503 y Modal could not be reached.
no_face 422 n No face was found in the image or video.
no_worker_answer 504 y No live worker answered the session's offer in time.
not_found 404 n No such object, file or route.
offer_too_large 422 n The SDP offer is over the size limit.
orchestrator_restarted 503 y The orchestrator restarted while the job ran.
output_not_found 404 n No render with this file name.
public_base_url_required 503 n Live sessions on this backend need PUBLIC_BASE_URL.
rate_limited 429 y Too many messages on the live session's data channel.
realtime_unavailable 503 n This server has no `realtime` extra (aiortc) for live sessions.
remote_failed 502 n The remote backend failed the job.
remote_job_lost 502 y The remote backend no longer knows the job.
render_failed 500 y The render failed on the worker.
runpod_endpoint_not_found 502 n The RunPod endpoint id is unknown to RunPod.
runpod_rejected 502 n RunPod refused the job.
runpod_unauthorized 502 n RunPod refused the API key.
runpod_unavailable 503 y RunPod answered with a server error.
runpod_unreachable 503 y RunPod could not be reached.
say_timeout 504 y The live worker did not confirm the speech in time.
session_ended 410 n The live session has ended.
session_exists 409 n A live session with this id runs already.
session_not_found 404 n No live session with this id.
session_not_ready 409 y The live session has no answer from its worker yet.
setup_timeout 504 y The live session's WebRTC connection was not set up in time.
single_replica_database 409 n Several replicas need a shared database (not SQLite).
still_running 504 y The job is still running; read it again later.
storage_error 502 y The store failed the call.
storage_unavailable 503 y The store could not be reached.
submit_uncertain 502 n The submit may have reached the backend; the job waits for its webhook instead of being resent.
task_failed 502 n The worker failed the task.
task_not_served 422 n This worker does not serve the task.
timeout 504 y The job ran past its time limit.
too_large 413 n The body, file or object is over its size limit.
too_many_sessions 429 y The server runs its maximum of live sessions.
too_many_streams 429 y The server follows its maximum of event streams.
tts_auth_failed 502 n The speech provider refused the API key.
tts_failed 500 y Speech synthesis failed.
tts_not_configured 503 n The speech provider asked for has no API key here.
tts_provider_error 502 y The speech provider failed the request.
tts_provider_timeout 504 y The speech provider did not answer in time.
tts_provider_unreachable 502 y The speech provider could not be reached.
tts_rate_limited 429 y The speech provider is rate limiting the account (after retries).
tts_unavailable 503 n No speech synthesizer is installed here.
unauthorized 401 n The bearer token is missing or wrong.
unknown_emotion 422 n The emotion is not one of those offered.
unknown_task 422 n The task is not one of those offered.
unknown_tts_provider 422 n The speech provider is not one of those offered.
unknown_voice 422 n The voice is not one the speech provider offers.
unknown_weights 400 n The weights name is not in the manifest.
unsafe_archive 422 n The avatar archive holds an unsafe member (path, link or size).
unsupported_audio 422 n The audio format is not supported.
unsupported_uri 400 n The URI scheme is not supported.
unsupported_voice_option 422 n The speech provider does not take this voice option.
upload_failed 502 y The store refused the upload.
url_expired 410 n The signed file URL has expired.
url_refused 422 n The URL points where this server may not fetch (private address or scheme).
user_required 422 n The token acts for several users: the request must name one (LIVETALKING_USER_ID).
user_session_limit 429 y The user has their maximum of live sessions.
video_too_large 422 n The video is over the size limit.
video_too_long 422 n The video is longer than the worker accepts.
webhook_rejected 403 n The webhook token does not match.
webhooks_disabled 403 n Webhooks are disabled (no WEBHOOK_SECRET).
weights_missing 503 n The engine's weights are not on this worker.
worker_crashed 502 y The local worker process died while it ran the job.
worker_error 502 n The live worker reported an error without a code.
worker_failed 502 n The live session's worker ended or failed it.
worker_lost 502 y The worker running the job was lost.
worker_unhealthy 503 y The worker's engines failed to load.
"""


def _parse(table: str) -> dict[str, ErrorCode]:
    codes = {}
    for line in table.strip().splitlines():
        code, status, retryable, meaning = line.split(" ", 3)
        codes[code] = ErrorCode(int(status), retryable == "y", meaning)
    return codes


CODES: dict[str, ErrorCode] = _parse(_TABLE)
"""Every error code: code -> (HTTP status, retryable, meaning)."""

UNLISTED = ErrorCode(500, False, "Not in the table (a bug: every code raised must be listed).")


def describe(code: str) -> ErrorCode:
    """The table's row for ``code`` (``UNLISTED`` for a code the table lacks, e.g. ``http_418``)."""
    return CODES.get(code, UNLISTED)


def markdown_table() -> str:
    """The README's list of error codes, generated from the table."""
    lines = ["| code | HTTP | retry | meaning |", "|---|---|---|---|"]
    lines += [f"| `{c}` | {e.http_status} | {'yes' if e.retryable else 'no'} | {e.meaning} |" for c, e in CODES.items()]
    return "\n".join(lines)


def codes_description() -> str:
    """The OpenAPI description of ``error_code``: every code with its HTTP status and meaning."""
    rows = "\n".join(
        f"- `{c}` ({e.http_status}{', retryable' if e.retryable else ''}): {e.meaning}" for c, e in CODES.items()
    )
    return f"A stable snake_case code, one of:\n\n{rows}"


def responses_description(status: int, summary: str) -> str:
    """An OpenAPI response's description: its summary and the codes the table answers with ``status``."""
    named = ", ".join(f"`{c}`" for c, e in CODES.items() if e.http_status == status)
    return f"{summary} ({named})" if named else summary
