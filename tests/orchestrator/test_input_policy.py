"""The API's input rule (issue 20) against two tenants through a real uvicorn server, on a file://, an s3://
(moto's server) and a gs:// (the GCS emulator) store: dotted and encoded paths never reach another tenant's
upload, live sessions go through the same rule as jobs, and a tenant's `store` stays under
ALLOWED_STORE_PREFIXES."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from handlers.errors import TaskError
from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.input_policy import check_request_inputs
from orchestrator.core.service import JobService
from orchestrator.devtools.background_server import BackgroundServer
from tests.orchestrator.test_api import PORTRAIT
from tests.storage.uri_attacks import escapes

OPERATOR = {"Authorization": "Bearer operator-token"}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
CDN = "https://cdn.example.com/"
OFFER = {"sdp": "v=0", "type": "offer"}


@dataclass
class TenantApi:
    url: str
    store: str  # the configured store's root URI

    def call(self, method: str, path: str, who: dict[str, str], **kwargs: object) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=who, timeout=30, **kwargs)  # type: ignore[arg-type]

    def upload(self, who: dict[str, str], user_id: str) -> str:
        files = {"file": ("face.png", PORTRAIT, "image/png")}
        answer = self.call("POST", "/v1/uploads", who, files=files, data={"user_id": user_id, "kind": "image"})
        assert answer.status_code == 201, answer.text
        return answer.json()["uri"]

    def jobs(self) -> list[dict]:
        return self.call("GET", "/v1/jobs", OPERATOR).json()


@pytest.fixture(params=["file", "s3", "gs"])
def store_uri(request: pytest.FixtureRequest, local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        return local_settings.avatar_store_uri
    bucket = request.getfixturevalue("s3_bucket" if request.param == "s3" else "gcs_bucket")
    monkeypatch.setenv("AVATAR_STORE_URI", bucket)
    return bucket


@pytest.fixture(params=["prefixes", "no-prefixes"])
def api(request: pytest.FixtureRequest, store_uri: str, tmp_path) -> Iterator[TenantApi]:  # noqa: ANN001
    settings = OrchestratorSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        api_token="operator-token",
        tenant_tokens={"alice-token": ["alice"], "bob-token": ["bob"]},
        allowed_input_prefixes=CDN if request.param == "prefixes" else "",
        queue_timeout_s=0,  # accepted jobs time out at once: no worker is needed to see what was accepted
    )
    service = JobService(settings)
    with BackgroundServer(create_app(service)) as server:
        yield TenantApi(server.url, store_uri)
    service.stop()


def _refused(answer: httpx.Response, what: str) -> None:
    assert answer.status_code == 422, (what, answer.status_code, answer.text)
    assert answer.json()["error_code"] == "url_refused", (what, answer.json())


def test_dot_segments_never_reach_another_tenants_upload(api: TenantApi) -> None:
    """Class: dot segments, encoded dots and slashes, backslashes in an input URI starting with the tenant's own
    prefix: refused as url_refused on jobs and the seed routes, and no job is made."""
    bobs = api.upload(BOB, "bob")
    own_folder = api.upload(ALICE, "alice").rsplit("/", 1)[0] + "/"
    assert own_folder.endswith("/uploads/alice/")
    variants = {"plain_other_users_upload": bobs, **escapes(own_folder, "bob", bobs.rsplit("/", 1)[1])}
    for name, uri in variants.items():
        body = {"user_id": "alice", "image": uri, "emotion": "happy"}
        _refused(api.call("POST", "/v1/emotions", ALICE, json=body), name)
        _refused(api.call("POST", "/v1/jobs", ALICE, json={"task": "render_emotion", **body}), name)
        seed = {"image_url": uri, "audio_url": CDN + "a.wav", "user_id": "alice"}
        _refused(api.call("POST", "/generate", ALICE, json=seed), name)
    assert api.jobs() == []
    own = {"user_id": "alice", "image": bobs.replace("/bob/", "/alice/"), "emotion": "sad"}
    assert api.call("POST", "/v1/emotions", ALICE, json=own).status_code == 202


def test_live_sessions_apply_the_same_input_rule_as_jobs(api: TenantApi) -> None:
    """Class: live sessions skipping the input policy: another tenant's upload (plain or dotted), a foreign
    store and inputs outside the allowed prefixes are refused before any session work."""
    bobs = api.upload(BOB, "bob")
    own_folder = api.upload(ALICE, "alice").rsplit("/", 1)[0] + "/"
    variants = {"plain_other_users_upload": bobs, **escapes(own_folder, "bob", bobs.rsplit("/", 1)[1])}
    for name, uri in variants.items():
        body = {"user_id": "alice", "image": uri, "offer": OFFER}
        _refused(api.call("POST", "/v1/sessions", ALICE, json=body), name)
    foreign_store = {"user_id": "alice", "avatar_id": "a1", "store": "s3://someone-elses-bucket", "offer": OFFER}
    _refused(api.call("POST", "/v1/sessions", ALICE, json=foreign_store), "foreign store")
    dotted_store = {**foreign_store, "store": api.store + "/avatars/../../elsewhere"}
    _refused(api.call("POST", "/v1/sessions", ALICE, json=dotted_store), "dotted store")


def test_a_tenants_store_is_limited_to_the_allowed_store_prefixes(
    api: TenantApi,
) -> None:
    """Class: a tenant's `store` naming any bucket the workers reach: refused unless under ALLOWED_STORE_PREFIXES
    (default: the configured store), normalised first; the operator is not limited."""
    body = {"user_id": "alice", "image": CDN + "face.png", "emotion": "happy"}
    for store in (
        "s3://someone-elses-bucket",
        "gs://someone-elses-bucket/x",
        api.store + "/../x",
        api.store + "%2f..%2fx",
    ):
        _refused(api.call("POST", "/v1/emotions", ALICE, json={**body, "store": store}), store)
    assert api.call("POST", "/v1/emotions", ALICE, json={**body, "store": api.store}).status_code == 202
    if not api.store.startswith("file:"):  # file:// stores other than the configured one are refused for everyone
        operator = api.call("POST", "/v1/emotions", OPERATOR, json={**body, "store": "s3://operators-bucket"})
        assert operator.status_code == 202, operator.text


def test_allowed_store_prefixes_widen_a_tenants_stores(local_settings: Settings) -> None:
    """Class: ALLOWED_STORE_PREFIXES: listed prefixes (normalised) and the configured store pass for a tenant."""
    storage = local_settings.storage.model_copy(update={"allowed_store_prefixes": "s3://tenant-stores/"})
    handler_settings = local_settings.model_copy(update={"storage": storage})
    settings = OrchestratorSettings(database_url="sqlite://")
    tenant = frozenset({"alice"})
    body = {"user_id": "alice", "image": CDN + "face.png", "store": "s3://tenant-stores/alice"}
    checked = check_request_inputs(body, settings, handler_settings, owners=tenant)
    assert checked["store"] == "s3://tenant-stores/alice"
    for store in ("s3://tenant-stores-2/x", "s3://tenant-stores/%2e%2e/x", "s3://other"):
        with pytest.raises(TaskError) as err:
            check_request_inputs({**body, "store": store}, settings, handler_settings, owners=tenant)
        assert err.value.code == "url_refused", store
