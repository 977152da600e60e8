"""The one exception type storage raises."""


class StorageError(Exception):
    """A storage failure with a stable snake_case ``code`` and an actionable message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
