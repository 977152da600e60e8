"""The API's rule for the URIs a request names: jobs (``/v1/*``), the seeds' routes and live sessions.

One function, ``check_request_inputs``, on top of the storage layer's one rule
(``storage.access.check_input_uri``: normalised, then checked, then opened as checked). It returns the
request with its ``store`` and its input URIs (``video``, ``image``, ``audio``) in normalised form; the
caller passes those on (to the job's payload, to the session), so the worker opens what was checked.

The rule, for every caller over HTTP:

- ``data:`` inputs read nothing and pass.
- Inputs must lie under ALLOWED_INPUT_PREFIXES when it is set; a user's own uploads
  (``uploads/{user_id}/``, ``training-videos/{user_id}/`` in the request's store or the configured one)
  always pass.
- ``file://`` inputs only inside the configured store; a ``file://`` ``store`` only if it is the configured one.
- A tenant (``owners``: its user ids) may read the per-user folders of a store (``uploads/``,
  ``training-videos/``, ``avatars/``, ``generated-videos/``, ``emotions/``) only for its own users, and its
  ``store`` must lie under ALLOWED_STORE_PREFIXES (default: the configured store).

``avatarctl`` commands (``from_http=False``, the operator on this machine) keep only the prefix rule.
"""

from __future__ import annotations

from typing import Any

import handlers
from handlers.errors import TaskError
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.uploads import INPUT_FIELD_KINDS, own_upload_prefixes
from storage import StorageError
from storage.access import InputPolicy, check_input_uri, check_store_uri, normalise_prefixes, normalise_root, scheme_of

UPLOAD_HINT = "; upload the file with POST /v1/uploads or use an allowed URI."


def check_request_inputs(
    payload: dict[str, Any],
    settings: OrchestratorSettings,
    handler_settings: handlers.Settings,
    *,
    owners: frozenset[str] | None = None,
    from_http: bool = True,
) -> dict[str, Any]:
    """``payload`` with ``store`` and every input URI normalised and checked (see the module docstring);
    TaskError ``url_refused`` (or ``invalid_uri``, ``unsupported_uri``) naming the field and what to do.

    ``owners``: the caller's user ids (a tenant), None for the operator. ``from_http``: the request came over
    the API (the ``file://`` rules apply). Used by job submission, the seed routes and ``POST /v1/sessions``."""
    try:
        return _checked(payload, settings, handler_settings, owners, from_http)
    except StorageError as exc:
        raise TaskError(exc.code, exc.message) from None


def _checked(
    payload: dict[str, Any],
    settings: OrchestratorSettings,
    handler_settings: handlers.Settings,
    owners: frozenset[str] | None,
    from_http: bool,
) -> dict[str, Any]:
    checked = dict(payload)
    configured = normalise_root(handler_settings.avatar_store_uri, what="AVATAR_STORE_URI")
    store = payload.get("store")
    store_root = configured
    if isinstance(store, str):
        store_root = _store_root(store, configured, handler_settings, owners, from_http)
        checked["store"] = store_root.rstrip("/") if store_root != "file:///" else store_root
    user_id = payload.get("user_id")
    roots = tuple(dict.fromkeys((store_root, configured)))
    own = tuple(p for root in roots for p in own_upload_prefixes(root, user_id if isinstance(user_id, str) else None))
    policy = InputPolicy(
        prefixes=normalise_prefixes(settings.input_prefixes, what="ALLOWED_INPUT_PREFIXES"),
        always=normalise_prefixes(own),
        file_roots=(configured,) if from_http else None,
        owned_roots=roots if owners is not None else (),
        owners=owners,
        hint=UPLOAD_HINT,
    )
    for name in INPUT_FIELD_KINDS:
        value = payload.get(name)
        if isinstance(value, str):
            checked[name] = check_input_uri(value, policy, what=f"`{name}`")
    return checked


def _store_root(
    store: str, configured: str, handler_settings: handlers.Settings, owners: frozenset[str] | None, from_http: bool
) -> str:
    allowed: tuple[str, ...] = ()
    if owners is not None:  # a tenant: ALLOWED_STORE_PREFIXES, by default the configured store
        listed = normalise_prefixes(handler_settings.storage.store_prefixes, what="ALLOWED_STORE_PREFIXES")
        allowed = (*listed, configured)
    root = check_store_uri(store, allowed)
    if from_http and scheme_of(root) == "file" and root != configured:
        raise StorageError(
            "url_refused", "`store` may not name a file:// root other than the configured store; leave `store` out."
        )
    return root
