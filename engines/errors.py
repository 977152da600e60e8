"""The one exception type engines raise for conditions a caller can act on."""


class EngineError(Exception):
    """A failure with a stable snake_case ``code`` and a message a user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
