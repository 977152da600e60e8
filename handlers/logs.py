"""Logging set-up, done once by each entry point (RunPod, Modal, the CLI); modules use ``getLogger(__name__)``."""

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int | str = logging.INFO, force: bool = False) -> None:
    """Root logger at ``level`` in the project's one format; ``force`` replaces handlers a library installed."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=force)
