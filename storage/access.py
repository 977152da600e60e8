"""Which inputs a worker may read: ALLOWED_INPUT_PREFIXES, checked by every fetch and every redirect hop."""

from storage.config import StorageSettings
from storage.errors import StorageError


def check_input_allowed(uri: str, settings: StorageSettings) -> None:
    """StorageError ``url_refused`` when ALLOWED_INPUT_PREFIXES is set and ``uri`` starts with none of them."""
    prefixes = settings.input_prefixes
    if prefixes and not uri.startswith(prefixes):
        shown = uri if len(uri) <= 80 else uri[:77] + "..."
        raise StorageError(
            "url_refused",
            f"input {shown!r} is outside the allowed prefixes ({', '.join(prefixes)}; ALLOWED_INPUT_PREFIXES)",
        )
