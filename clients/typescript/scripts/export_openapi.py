"""Print the orchestrator API's OpenAPI document (the FastAPI app's, built without a server or a database).

``make client`` writes it to clients/typescript/openapi.json and generates src/schema.ts from it; the
test suite fails when either committed file is stale.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings


def openapi_document() -> dict:
    with tempfile.TemporaryDirectory() as tmp:  # the app's JobService needs a database; nothing is stored
        settings = OrchestratorSettings(database_url=f"sqlite:///{Path(tmp) / 'spec.db'}")
        app = create_app(settings=settings)
        try:
            return app.openapi()
        finally:
            app.state.context.service.stop()


def openapi_json() -> str:
    """The document as committed in clients/typescript/openapi.json."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(openapi_json())
