"""MuseTalk 1.5 lip-sync in-process (TMElyralab/MuseTalk; code and weights MIT, commercial use allowed).

    from engines.lipsync.musetalk import load_musetalk
    mt = load_musetalk(root, precision="auto")   # root: upstream's models/ layout
    chunks = mt.audio_chunks(wav_16k, fps=25)    # (T, 50, 384)
    latents = mt.face_latents(faces_bgr)         # uint8 (B, 256, 256, 3) -> (B, 8, 32, 32)
    faces = mt.generate(latents, chunks)         # -> uint8 (B, 256, 256, 3) BGR

Needs the ``musetalk`` extra (diffusers, transformers). Importing this package registers the ``musetalk``
lip-sync engine.
"""

from engines.lipsync.musetalk.engine import MuseTalkEngine
from engines.lipsync.musetalk.model import MuseTalk, load_musetalk

__all__ = ["MuseTalk", "MuseTalkEngine", "load_musetalk"]
