"""The one rule for every URI a task reads: normalised, then checked, then opened exactly as checked.

``check_input_uri(uri, policy)`` owns it. It puts the URI in one canonical form (``normalise_uri``), refuses
paths that another layer could read differently, checks that form against an ``InputPolicy`` and returns
it: the caller opens the returned URI and nothing else (no second parse, no kernel resolving ``..`` later).

- Refused in any path (``url_refused``): ``.`` and ``..`` segments (also ``..;x``, fullwidth dots), empty
  segments (``//``), backslashes, percent-encoded ``.``, ``/``, ``\\`` or ``%`` (double encoding), control
  characters, escapes that are not UTF-8 (overlong ``%c0%ae``).
- ``file://`` paths are made absolute and their symlinks resolved once; that path is checked and opened.
- ``s3://`` and ``gs://`` keys are kept as written (they are object names, not paths); bucket names checked.
- ``http(s)://``: host lowercased, default port dropped, credentials refused, path re-encoded one way,
  fragment dropped; each redirect hop goes through ``follow_redirect`` (its own path checked before it is
  joined, then the joined URL checked like an input).

Callers: ``storage.fetch`` (workers, with ``InputPolicy.from_settings``), the workers' store roots and avatar
TARs, and the orchestrator's ``check_request_inputs`` (jobs, seed routes, live sessions), which adds the
API's own rules (a tenant's own folders, ``file://`` only inside the configured store) to the same policy.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

from storage.config import StorageSettings
from storage.errors import StorageError
from storage.keys import AVATARS_PREFIX, EMOTIONS_PREFIX, TRAINING_VIDEOS_PREFIX, UPLOADS_PREFIX, VIDEOS_PREFIX

FETCH_SCHEMES = ("s3", "gs", "file", "https", "http", "data")
DEFAULT_PORTS = {"http": 80, "https": 443}
# The store folders whose next segment is a user id (seed 000's layout): they belong to that user.
USER_FOLDERS = (UPLOADS_PREFIX, TRAINING_VIDEOS_PREFIX, AVATARS_PREFIX, VIDEOS_PREFIX, EMOTIONS_PREFIX)
BUCKET = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,220}[A-Za-z0-9])?")
HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
ESCAPE = re.compile(r"%(..)?", re.DOTALL)
REFUSED_ESCAPES = {0x2E: "'.'", 0x2F: "'/'", 0x5C: "'\\'", 0x25: "'%'"}
PATH_SAFE = "/!$&'()*+,;=:@-._~"  # what stays unescaped in a canonical http(s) path (RFC 3986 pchar and '/')
RULE = "name the object by its plain path (no dot segments, encoded dots or slashes, or backslashes)"


def _short(uri: str) -> str:
    shown = uri.split("?", 1)[0]  # a signed URL's query carries secrets
    return shown if len(shown) <= 100 else shown[:97] + "..."


def _refuse(what: str, uri: str, problem: str) -> StorageError:
    return StorageError("url_refused", f"{what} {_short(uri)!r} {problem}; {RULE}")


def scheme_of(uri: str) -> str:
    head, sep, _ = uri.partition(":")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else ""


# ---- normalising -------------------------------------------------------------------------------------


def path_problem(path: str, *, trailing_slash: bool = False) -> str | None:
    """Why a URI's raw (still percent-encoded) path is refused, or None. A leading ``/`` is expected; a
    trailing one only when ``trailing_slash`` (prefixes and store roots)."""
    path = path if path.startswith("/") else "/" + path  # a relative reference (a redirect's Location)
    if "\\" in path:
        return "has a backslash in its path"
    for match in ESCAPE.finditer(path):
        pair = match.group(1) or ""
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", pair):
            return "has a malformed percent escape in its path"
        byte = int(pair, 16)
        if byte in REFUSED_ESCAPES:
            return f"has a percent-encoded {REFUSED_ESCAPES[byte]} in its path"
        if byte < 0x20 or byte == 0x7F:
            return "has an encoded control character in its path"
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return "has percent escapes that are not UTF-8 in its path"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return "has a control character in its path"
    for form in {decoded, unicodedata.normalize("NFKC", decoded)}:
        if "\\" in form or form.count("/") != decoded.count("/"):
            return "has a character that reads as a slash or backslash in its path"
        segments = form.split("/")[1:]
        if trailing_slash and len(segments) > 1 and segments[-1] == "":
            segments = segments[:-1]
        for segment in segments:
            if segment == "" and segments != [""]:
                return "has an empty segment ('//') in its path"
            bare = segment.split(";", 1)[0].strip()
            if bare and set(bare) == {"."}:
                return "has a '.' or '..' segment in its path"
    return None


def _check_path(what: str, uri: str, path: str, trailing_slash: bool) -> None:
    problem = path_problem(path, trailing_slash=trailing_slash)
    if problem:
        raise _refuse(what, uri, problem)


def _control_problem(uri: str) -> str | None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c.isspace() and c != " " for c in uri):
        return "has a control or whitespace character"
    return None


def normalise_uri(uri: str, *, what: str = "input", prefix: bool = False) -> str:
    """The canonical form of ``uri`` (see the module docstring); StorageError ``url_refused`` for paths other
    layers could read differently, ``invalid_uri`` / ``unsupported_uri`` for malformed ones. ``prefix``: ``uri``
    is a prefix or a store root (a trailing ``/`` kept, an empty path allowed)."""
    if not isinstance(uri, str) or not uri:
        raise StorageError("invalid_uri", f"{what} is empty")
    scheme = scheme_of(uri)
    if scheme == "data":
        return uri
    problem = _control_problem(uri)
    if problem:
        raise _refuse(what, uri, problem)
    if scheme in ("s3", "gs"):
        return _bucket_uri(uri, scheme, what, prefix)
    if scheme == "file":
        return _file_uri(uri, what, prefix)
    if scheme in DEFAULT_PORTS:
        return _http_uri(uri, scheme, what, prefix)
    raise StorageError(
        "unsupported_uri", f"{what} {_short(uri)!r} has an unsupported scheme; use one of {', '.join(FETCH_SCHEMES)}"
    )


def _bucket_uri(uri: str, scheme: str, what: str, prefix: bool) -> str:
    parts = urlsplit(uri)
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} is not of the form {scheme}://bucket/key")
    _check_authority(what, uri, parts.netloc)
    if not BUCKET.fullmatch(parts.netloc):
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} does not name a valid bucket")
    path = parts.path
    if not path and prefix:
        return f"{scheme}://{parts.netloc}/"
    _check_path(what, uri, path, trailing_slash=prefix)
    return f"{scheme}://{parts.netloc}{path}"


def _check_authority(what: str, uri: str, netloc: str) -> None:
    """A bucket or host spelled with escapes, backslashes or dot runs is refused like such a path."""
    if "%" in netloc or "\\" in netloc or ".." in netloc:
        raise _refuse(what, uri, "has a percent escape, a backslash or '..' in its bucket or host")


def _file_uri(uri: str, what: str, prefix: bool) -> str:
    from storage.local import path_from_file_uri

    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost", "."):
        if parts.netloc == "..":
            raise _refuse(what, uri, "has a '..' segment in its path")
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} names host {parts.netloc!r}; use a local path")
    if parts.query or parts.fragment:
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} is not a file:// path")
    _check_path(what, uri, parts.path, trailing_slash=prefix)
    try:
        resolved = path_from_file_uri(uri).absolute().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} cannot be resolved ({exc})") from None
    canonical = resolved.as_uri()
    return (
        canonical + "/" if prefix and (uri.endswith("/") or not parts.path) and canonical != "file:///" else canonical
    )


def _http_uri(uri: str, scheme: str, what: str, prefix: bool) -> str:
    parts = urlsplit(uri)
    _check_authority(what, uri, parts.netloc)
    if "@" in parts.netloc:
        raise StorageError("url_refused", f"{what} {_short(uri)!r} carries credentials; use a signed URL instead")
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError as exc:  # a port out of 0..65535
        raise StorageError("url_refused", f"refusing {_short(uri)}: {exc}") from None
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} has a host that is not a DNS name") from None
    host = f"[{host}]" if ":" in host else host
    if not host or not HOST.fullmatch(host):
        raise StorageError("invalid_uri", f"{what} {_short(uri)!r} has no valid host")
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path or "/"
    _check_path(what, uri, path, trailing_slash=prefix or path.endswith("/"))
    canonical = f"{scheme}://{netloc}{quote(unquote(path), safe=PATH_SAFE)}"
    return f"{canonical}?{parts.query}" if parts.query else canonical


def normalise_prefixes(prefixes: Iterable[str], *, what: str = "prefix") -> tuple[str, ...]:
    """Prefixes (ALLOWED_INPUT_PREFIXES, ALLOWED_STORE_PREFIXES, store roots) in the form inputs are compared in."""
    return tuple(normalise_uri(p, what=what, prefix=True) for p in prefixes if p)


def normalise_root(uri: str, *, what: str = "store") -> str:
    """A store root or folder in normalised form, always ending in ``/``: what lies under it starts with it."""
    canonical = normalise_uri(uri, what=what, prefix=True)
    return canonical if canonical.endswith("/") else canonical + "/"


def is_under(uri: str, prefixes: Sequence[str]) -> bool:
    """Whether the normalised ``uri`` starts with one of the normalised ``prefixes`` (a root names itself too)."""
    return any(uri.startswith(p) or uri == p.rstrip("/") for p in prefixes)


# ---- the policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputPolicy:
    """What a reader may open. Every prefix and root is normalised (``normalise_prefixes``).

    - ``prefixes``: ALLOWED_INPUT_PREFIXES; empty allows every location.
    - ``always``: allowed whatever ``prefixes`` says (the configured store on workers, a user's own uploads).
    - ``allow_file``: whether ``file://`` may be read at all; ``file_roots``: when given, only under these
      (``normalise_root``, as ``owned_roots``).
    - ``owned_roots`` and ``owners``: in these stores, the per-user folders (``uploads/{user}/``, ...) may be
      read only for ``owners`` (None: for everyone).
    - ``hint``: how the user can fix a refusal (ends the message; by default the setting to change).
    """

    prefixes: tuple[str, ...] = ()
    always: tuple[str, ...] = ()
    allow_file: bool = True
    file_roots: tuple[str, ...] | None = None
    owned_roots: tuple[str, ...] = ()
    owners: frozenset[str] | None = None
    hint: str = ""

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> InputPolicy:
        """The workers' policy: ALLOWED_INPUT_PREFIXES (the configured store added by ``Settings.input_storage``)
        and ALLOW_FILE_URIS."""
        return cls(prefixes=normalise_prefixes(settings.input_prefixes), allow_file=settings.allow_file_uris)


def check_input_uri(uri: str, policy: InputPolicy, *, what: str = "input") -> str:
    """Normalise ``uri``, check the normalised form against ``policy`` and return it; the caller must open
    exactly the returned URI. StorageError ``url_refused`` (with a message naming what to do) otherwise.
    ``data:`` URIs read nothing and pass unchanged."""
    canonical = normalise_uri(uri, what=what)
    scheme = scheme_of(canonical)
    if scheme == "data":
        return canonical
    if scheme == "file":
        _check_file(canonical, policy, what)
    _check_owner(canonical, policy, what)
    if policy.prefixes and not is_under(canonical, (*policy.prefixes, *policy.always)):
        raise StorageError(
            "url_refused",
            f"{what} {_short(canonical)!r} is outside the allowed input locations ({', '.join(policy.prefixes)})"
            + (policy.hint or " (ALLOWED_INPUT_PREFIXES)."),
        )
    return canonical


def _check_file(canonical: str, policy: InputPolicy, what: str) -> None:
    if not policy.allow_file:
        raise StorageError(
            "url_refused", f"file:// inputs are disabled on this worker ({_short(canonical)!r}); set ALLOW_FILE_URIS=1"
        )
    if policy.file_roots is not None and not is_under(canonical, policy.file_roots):
        raise StorageError(
            "url_refused", f"{what}: file:// inputs must lie in the configured store{policy.hint or '.'}"
        )


def _check_owner(canonical: str, policy: InputPolicy, what: str) -> None:
    if policy.owners is None:
        return
    for root in policy.owned_roots:
        if not canonical.startswith(root):
            continue
        folder, _, rest = canonical[len(root) :].partition("/")
        if f"{folder}/" in USER_FOLDERS and rest.partition("/")[0] not in policy.owners:
            raise StorageError(
                "url_refused",
                f"{what} {_short(canonical)!r} lies in another user's folder of the store{policy.hint or '.'}",
            )


def check_store_uri(uri: str, allowed: Sequence[str]) -> str:
    """A request's ``store`` root, normalised (``normalise_root``) and, when ``allowed`` (normalised roots or
    prefixes: ALLOWED_STORE_PREFIXES) is not empty, under one of them; returns the normalised root."""
    root = normalise_root(uri, what="`store`")
    if allowed and not is_under(root, allowed):
        raise StorageError(
            "url_refused",
            f"`store` {_short(uri)!r} is outside the allowed stores ({', '.join(allowed)}; ALLOWED_STORE_PREFIXES); "
            "leave `store` out to use the configured one",
        )
    return root


def follow_redirect(current: str, location: str, policy: InputPolicy) -> str:
    """The next hop of a redirect from ``current`` to ``location``, checked like an input: the Location's own
    path must pass the path rules before it is joined (so ``../private`` is refused, not resolved)."""
    problem = _control_problem(location) or path_problem(urlsplit(location).path or "/", trailing_slash=True)
    if problem and not scheme_of(location) == "data":
        raise _refuse("redirect target", location, problem)
    return check_input_uri(urljoin(current, location), policy, what="redirect target")


def file_path(canonical: str) -> Path:
    """The local path of a normalised ``file://`` URI (already resolved: open it as it is)."""
    from storage.local import path_from_file_uri

    return path_from_file_uri(canonical)
