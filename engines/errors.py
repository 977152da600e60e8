"""The one exception type engines raise for conditions a caller can act on."""

from errors import CodedError


class EngineError(CodedError):
    """A failure with a stable snake_case ``code`` (``errors.codes``) and a message a user can act on."""
