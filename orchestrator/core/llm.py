"""An OpenAI-compatible chat LLM (``POST {LLM_BASE_URL}/chat/completions``): one question, one answer.

What LiveTalking's ``/human`` with ``type: "chat"`` speaks. Any server speaking OpenAI's chat completions
protocol works (OpenAI, vLLM, llama.cpp's server, Ollama's ``/v1``). Each failure is a ``TaskError`` whose
code says what to fix: ``llm_not_configured``, ``llm_unavailable`` (no answer), ``llm_failed`` (an error
status or an answer without a message).
"""

from __future__ import annotations

from typing import Any

import httpx

from handlers.errors import TaskError
from handlers.schemas import MAX_TEXT_CHARS
from orchestrator.core.config import OrchestratorSettings


async def chat_answer(settings: OrchestratorSettings, question: str) -> str:
    """The LLM's answer to ``question`` (at most MAX_TEXT_CHARS characters: what a live avatar says at once)."""
    if not (settings.llm_base_url and settings.llm_model):
        raise TaskError(
            "llm_not_configured",
            "`type: chat` needs an LLM: set LLM_BASE_URL (an OpenAI-compatible server) and LLM_MODEL"
            " (and LLM_API_KEY if it needs one), or send `type: echo` to speak the text itself.",
        )
    body = {
        "model": settings.llm_model,
        "messages": [
            {"role": "system", "content": settings.llm_system_prompt},
            {"role": "user", "content": question},
        ],
    }
    headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
    url = f"{settings.llm_base_url}/chat/completions"
    try:
        async with httpx.AsyncClient(timeout=settings.llm_timeout_s) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise TaskError("llm_unavailable", f"The LLM at {url} did not answer ({type(exc).__name__}).") from None
    if response.status_code >= 400:
        raise TaskError("llm_failed", f"The LLM answered {response.status_code}: {response.text[:300]}")
    answer = _message(response)
    if not answer:
        raise TaskError("llm_failed", f"The LLM's answer has no message: {response.text[:300]}")
    return answer[:MAX_TEXT_CHARS]


def _message(response: httpx.Response) -> str:
    try:
        choices: Any = response.json()["choices"]
        return str(choices[0]["message"]["content"] or "").strip()
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
