"""The one input-URI rule (storage.access, issue 20): every URI is normalised, then checked, then opened as
checked, on every scheme (file://, s3:// on moto's server, gs:// on the GCS emulator, http(s):// and each
redirect hop on a local server that resolves dot segments the way real servers do)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import handlers
from handlers.runtime import WorkerRuntime
from storage import InputPolicy, StorageError, StorageSettings, fetch, normalise_uri, open_store
from storage.access import check_input_uri, check_store_uri, normalise_prefixes, normalise_root
from tests.storage.http_servers import QuietHandler, serving
from tests.storage.uri_attacks import escapes

SECRET = b"bob's private upload"
OWN = b"alice's own upload"


def refused(uri: str, dest: Path, settings: StorageSettings, policy: InputPolicy | None = None) -> StorageError:
    dest.mkdir(parents=True, exist_ok=True)
    with pytest.raises(StorageError) as err:
        fetch(uri, dest / "out", settings, policy=policy)
    assert os.listdir(dest) == [], f"{uri}: something was written"
    return err.value


def assert_all_refused(own: str, settings: StorageSettings, work: Path, policy: InputPolicy | None = None) -> None:
    for name, uri in escapes(own, "bob", "secret.png").items():
        error = refused(uri, work / name, settings, policy)
        assert error.code == "url_refused", f"{name}: {uri} -> {error.code} {error.message}"
        assert "plain path" in error.message or "ALLOWED" in error.message, error.message


def test_dot_segments_and_encodings_in_file_uris_are_refused_before_anything_is_opened(tmp_path: Path) -> None:
    """Class: dot segments / encoded dots / encoded slashes / backslashes in file:// paths (with and without
    an input-prefix rule): refused as url_refused, nothing read or written."""
    store = tmp_path / "store"
    for user, data in (("alice", OWN), ("bob", SECRET)):
        (store / "uploads" / user).mkdir(parents=True)
        (store / "uploads" / user / "secret.png").write_bytes(data)
    own = f"{store.as_uri()}/uploads/alice/"
    prefixed = StorageSettings(allowed_input_prefixes=own)
    assert fetch(own + "secret.png", tmp_path / "ok", prefixed).read_bytes() == OWN
    assert_all_refused(own, prefixed, tmp_path / "prefixed")
    assert_all_refused(own, StorageSettings(), tmp_path / "open")  # no prefix rule: still refused


def test_a_symlink_is_checked_where_it_leads(tmp_path: Path) -> None:
    """Class: resolve once, check the resolved form: a link in an allowed folder to another folder is refused."""
    store = tmp_path / "store"
    (store / "uploads" / "alice").mkdir(parents=True)
    (store / "uploads" / "bob").mkdir(parents=True)
    (store / "uploads" / "bob" / "secret.png").write_bytes(SECRET)
    (store / "uploads" / "alice" / "link.png").symlink_to("../bob/secret.png")
    own = f"{store.as_uri()}/uploads/alice/"
    error = refused(own + "link.png", tmp_path / "out", StorageSettings(allowed_input_prefixes=own))
    assert error.code == "url_refused" and "/uploads/bob/secret.png" in error.message


def test_owner_folders_refuse_other_users_after_normalising(tmp_path: Path) -> None:
    """Class: a tenant's policy keeps it out of other users' folders whatever the spelling."""
    root = normalise_root((tmp_path / "store").as_uri())
    policy = InputPolicy(owned_roots=(root,), owners=frozenset({"alice"}))
    assert check_input_uri(f"{root}uploads/alice/a.png", policy).endswith("/uploads/alice/a.png")
    assert check_input_uri(f"{root}shared/logo.png", policy).endswith("/shared/logo.png")
    for folder in ("uploads", "training-videos", "avatars", "generated-videos", "emotions"):
        with pytest.raises(StorageError) as err:
            check_input_uri(f"{root}{folder}/bob/x.png", policy)
        assert err.value.code == "url_refused" and "another user's folder" in err.value.message


@pytest.mark.parametrize(
    ("prefix", "uri"),
    [
        ("https://cdn.example.com", "https://cdn.example.com.evil.com/x.png"),
        ("https://cdn.example.com", "https://cdn.example.com@evil.com/x.png"),
        ("https://cdn.example.com/a/", "https://cdn.example.com/a/../b/x.png"),
        ("s3://bucket", "s3://bucket-evil/x.png"),
        ("s3://bucket/a/", "s3://bucket/a/%2e%2e/b/x.png"),
    ],
)
def test_prefixes_are_compared_in_normal_form(prefix: str, uri: str) -> None:
    """Class: prefix confusion: a host or bucket prefix ends at its boundary; credentials in URLs are refused."""
    policy = InputPolicy(prefixes=normalise_prefixes([prefix]))
    with pytest.raises(StorageError) as err:
        check_input_uri(uri, policy)
    assert err.value.code == "url_refused"


def test_normal_form_is_one_spelling() -> None:
    """Class: normalisation: equivalent spellings of one object give one URI, which is what is opened."""
    assert (
        normalise_uri("HTTPS://CDN.Example.com:443/a/b%20c.png?sig=%2F")
        == "https://cdn.example.com/a/b%20c.png?sig=%2F"
    )
    assert normalise_uri("http://[::1]:80/x") == "http://[::1]/x"
    assert normalise_uri("s3://bucket/a/b.png") == "s3://bucket/a/b.png"
    assert normalise_uri("data:,hi") == "data:,hi"


def _put(store_uri: str, key: str, data: bytes, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(data)
    open_store(store_uri).put(src, key)


@pytest.mark.parametrize("fixture", ["s3_bucket", "gcs_bucket"])
def test_dot_segments_on_bucket_stores_are_refused(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Class: the same shapes on s3:// (moto's server) and gs:// (the GCS emulator): refused before any request."""
    bucket = request.getfixturevalue(fixture)
    _put(bucket, "uploads/alice/secret.png", OWN, tmp_path)
    _put(bucket, "uploads/bob/secret.png", SECRET, tmp_path)
    own = f"{bucket}/uploads/alice/"
    settings = StorageSettings(allowed_input_prefixes=own)
    assert fetch(own + "secret.png", tmp_path / "ok", settings).read_bytes() == OWN
    assert_all_refused(own, settings, tmp_path / "prefixed")
    assert_all_refused(own, StorageSettings(), tmp_path / "open")


class _NormalisingServer(QuietHandler):
    """Serves /alice/* and /bob/secret.png after decoding and resolving the path as many servers do."""

    redirects = {
        "/alice/to-dotted": "/alice/../bob/secret.png",
        "/alice/to-encoded": "/alice/%2e%2e/bob/secret.png",
        "/alice/to-relative": "../bob/secret.png",
        "/alice/to-encoded-slash": "/alice/..%2fbob%2fsecret.png",
        "/alice/to-backslash": "/alice/..\\bob\\secret.png",
        "/alice/to-absolute-dotted": "http://{host}/alice/./../bob/secret.png",
        "/alice/to-file": "file.png",  # a plain relative redirect stays allowed
    }

    def do_GET(self) -> None:
        raw = urlsplit(self.path).path
        if raw in self.redirects:
            location = self.redirects[raw].format(host=self.headers["Host"])
            return self._send(302, b"", {"Location": location, "Content-Length": "0"})
        path = posixpath.normpath(unquote(unquote(raw)).replace("\\", "/"))
        body = {"/alice/file.png": OWN, "/bob/secret.png": SECRET}.get(path)
        self._send(200 if body else 404, body or b"", {"Content-Length": str(len(body or b""))})


@pytest.fixture(scope="module")
def normalising_url() -> Iterator[str]:
    with serving(_NormalisingServer) as url:
        yield url


def test_dot_segments_over_http_and_in_every_redirect_hop_are_refused(normalising_url: str, tmp_path: Path) -> None:
    """Class: http(s):// inputs and each redirect hop: a server that resolves `..` never gets asked for a path
    that leaves the allowed folder."""
    own = f"{normalising_url}/alice/"
    settings = StorageSettings(allow_private_urls=True, allowed_input_prefixes=own, http_timeout_s=2)
    assert fetch(own + "file.png", tmp_path / "a", settings).read_bytes() == OWN
    assert fetch(own + "to-file", tmp_path / "b", settings).read_bytes() == OWN
    assert_all_refused(own, settings, tmp_path / "direct")
    for hop in _NormalisingServer.redirects:
        if hop.endswith("to-file"):
            continue
        for who, hop_settings in (
            ("prefixed", settings),
            ("open", settings.model_copy(update={"allowed_input_prefixes": ""})),
        ):
            error = refused(normalising_url + hop, tmp_path / who / hop.rsplit("/", 1)[1], hop_settings)
            assert error.code == "url_refused" and "redirect target" in error.message, (hop, error.message)


def test_worker_tasks_refuse_dotted_inputs(runtime: WorkerRuntime, tmp_path: Path) -> None:
    """Class: the worker's fetch layer: a task given a dotted input answers url_refused and writes nothing."""
    store = Path(runtime.settings.avatar_store_uri.removeprefix("file://"))
    (store / "uploads" / "bob").mkdir(parents=True)
    (store / "uploads" / "bob" / "secret.png").write_bytes(SECRET)
    own = f"{runtime.settings.avatar_store_uri}/uploads/alice/"
    for name, uri in escapes(own, "bob", "secret.png").items():
        result = handlers.dispatch(
            {"task": "render_emotion", "user_id": "alice", "image": uri, "emotion": "happy"}, runtime
        )
        assert result.get("error_code") == "url_refused", (name, result)
    assert not (store / "emotions").exists()


def test_store_roots_are_normalised_and_limited(tmp_path: Path) -> None:
    """Class: ALLOWED_STORE_PREFIXES and dotted store roots: checked like inputs, normalised first."""
    allowed = normalise_prefixes(["s3://tenant-bucket/"])
    assert check_store_uri("s3://tenant-bucket/a", allowed) == "s3://tenant-bucket/a/"
    for store in (
        "s3://other-bucket",
        "s3://tenant-bucket/../other",
        "s3://tenant-bucket-2/x",
        "s3://tenant-bucket/%2e%2e",
    ):
        with pytest.raises(StorageError) as err:
            check_store_uri(store, allowed)
        assert err.value.code == "url_refused", store
    with pytest.raises(StorageError) as err:
        open_store(f"{(tmp_path / 'store').as_uri()}/../elsewhere")
    assert err.value.code == "url_refused" and not (tmp_path / "elsewhere").exists()


def test_workers_limit_request_stores_when_configured(runtime: WorkerRuntime, tmp_path: Path) -> None:
    """Class: ALLOWED_STORE_PREFIXES on a worker: a request's store outside it is url_refused."""
    limited = runtime.with_settings(
        runtime.settings.model_copy(
            update={"storage": runtime.settings.storage.model_copy(update={"allowed_store_prefixes": "s3://tenants/"})}
        )
    )
    body = {
        "task": "render_emotion",
        "user_id": "u",
        "image": "data:,x",
        "emotion": "happy",
        "store": (tmp_path / "other").as_uri(),
    }
    result = handlers.dispatch(body, limited)
    assert result["error_code"] == "url_refused" and "ALLOWED_STORE_PREFIXES" in result["error"]
    assert not (tmp_path / "other").exists()
