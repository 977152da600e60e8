"""Storage configuration, read from the environment once and passed in."""

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    """Credentials, endpoints and limits for every object store scheme."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # s3:// (AWS, MinIO, R2, moto). The seeds' S3_AWS_* names win over the usual AWS ones.
    s3_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("S3_ENDPOINT_URL"))
    s3_region: str | None = Field(
        None, validation_alias=AliasChoices("S3_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    s3_access_key_id: str | None = Field(
        None, validation_alias=AliasChoices("S3_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: str | None = Field(
        None, validation_alias=AliasChoices("S3_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )

    # gs:// (google-cloud-storage; STORAGE_EMULATOR_HOST is honoured by the client itself).
    gcs_project: str | None = Field(None, validation_alias=AliasChoices("GCS_PROJECT", "GOOGLE_CLOUD_PROJECT"))
    gcs_credentials_file: str | None = Field(
        None, validation_alias=AliasChoices("GCS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS")
    )
    gcs_public: bool = Field(False, validation_alias=AliasChoices("GCS_PUBLIC"))
    gcs_emulator_host: str | None = Field(None, validation_alias=AliasChoices("STORAGE_EMULATOR_HOST"))

    # Signed URLs returned in task results.
    signed_url_ttl_s: int = Field(86400, validation_alias=AliasChoices("SIGNED_URL_TTL", "GCS_SIGNED_URL_TTL"))

    # https:// reads.
    # file:// inputs read the worker's own disk: fine in-process, off in the container images.
    allow_file_uris: bool = Field(True, validation_alias=AliasChoices("ALLOW_FILE_URIS"))
    allow_private_urls: bool = Field(False, validation_alias=AliasChoices("ALLOW_PRIVATE_URLS"))
    http_max_bytes: int = Field(512 * 1024 * 1024, validation_alias=AliasChoices("HTTP_MAX_BYTES"))
    http_timeout_s: float = Field(60.0, validation_alias=AliasChoices("HTTP_TIMEOUT_S"))

    # Comma-separated URI prefixes inputs must start with (e.g. "s3://uploads/,https://cdn.example.com/");
    # empty allows every input. Keeps callers from making workers read whatever their credentials reach.
    allowed_input_prefixes: str = Field("", validation_alias=AliasChoices("ALLOWED_INPUT_PREFIXES"))

    # Comma-separated URI prefixes a request's `store` must start with. Workers check it only when it is set;
    # the orchestrator limits tenants to it, or to the configured store when it is empty.
    allowed_store_prefixes: str = Field("", validation_alias=AliasChoices("ALLOWED_STORE_PREFIXES"))

    @property
    def input_prefixes(self) -> tuple[str, ...]:
        return _split(self.allowed_input_prefixes)

    @property
    def store_prefixes(self) -> tuple[str, ...]:
        return _split(self.allowed_store_prefixes)


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())
