"""Closed sets and constants shared by the engines, the task contract and the entry points.

Defined once here, at the lowest layer that uses them; this module imports nothing, so the contract
(``handlers/schemas.py``) and the orchestrator can use them without loading numpy or an engine.
"""

FPS = 25  # LiveTalking avatars and every generated video
SAMPLE_RATE = 16000  # driving speech of the lip-sync engines, Hz mono

EMOTIONS = ("neutral", "happy", "sad", "surprised", "angry", "disgusted", "fearful")

# Still image formats the expression engines encode, with the content type each is stored under.
IMAGE_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}

# Speech providers, and the module where each registers itself (imported on first use, so httpx or the
# eSpeak library load only when used).
VOICE_PROVIDER_MODULES = {
    "espeak": "engines.tts.espeak",
    "fish": "engines.tts.http_providers",
    "openai": "engines.tts.http_providers",
}
VOICE_PROVIDERS = tuple(VOICE_PROVIDER_MODULES)
DEFAULT_VOICE_PROVIDER = "espeak"

# A photo with several faces: face_index 0 is the largest; at most this index.
MAX_FACE_INDEX = 31
