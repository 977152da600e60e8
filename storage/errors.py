"""The one exception type storage raises."""

from errors import CodedError


class StorageError(CodedError):
    """A storage failure with a stable snake_case ``code`` (``errors.codes``) and an actionable message."""
