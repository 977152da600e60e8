"""Pure compute engines: face analysis, speech, lip-sync, expression, codecs, weights.

Nothing here knows about buckets, HTTP services or jobs; engines import nothing from the
other packages of this project.
"""

from engines.errors import EngineError

__all__ = ["EngineError"]
