"""The exporter's settings: from flags, the environment (``CTS_EXPORTER_*``) and secret files.

Flags win over the environment, which wins over secret files in ``/run/secrets`` (one file per
setting, named like its variable, e.g. ``/run/secrets/cts_exporter_cts_token``). The token is
never a flag: it comes from ``--cts-token-file``, ``CTS_EXPORTER_CTS_TOKEN`` or a secret file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "CTS_EXPORTER_"
DEFAULT_PORT = 9853
SECRETS_DIR = Path("/run/secrets")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from ``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``250ms`` or plain seconds.

    Zero is refused unless ``allow_zero``, as no wait or interval of the exporter can be zero.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration like 90s, 15m, 2h, 7d or 30")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("a duration must be more than zero")
    return seconds


def _check_listen_address(value: str) -> str:
    host, port = split_address(value)
    return f"{host}:{port}"


def split_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) as a host and a port number."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (for example 0.0.0.0:{DEFAULT_PORT})")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - all interfaces is the point


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


Duration = Annotated[float, BeforeValidator(parse_duration)]
ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]
Url = Annotated[str, AfterValidator(_check_url)]


class ExporterSettings(BaseSettings):
    """Everything the exporter can be told; each field is a flag and a variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,
    )

    cts_url: Url | None = Field(
        None, description="base URL of the CTS, e.g. https://ci.kbase.us/services/cts"
    )
    cts_token_file: Path | None = Field(
        None, description="file holding the CTS token; re-read when it changes"
    )
    cts_token: SecretStr | None = Field(
        None, description="the CTS token itself (environment or secret file only, never a flag)"
    )
    listen_address: ListenAddress = Field(
        f"0.0.0.0:{DEFAULT_PORT}", description="where to serve /metrics"
    )
    scan_interval: Duration = Field(60.0, description="time between scans")
    lookback: Duration = Field(
        7 * 86400.0, description="scan jobs whose last transition is this recent"
    )
    request_timeout: Duration = Field(30.0, description="timeout of one CTS request")
    scan_timeout: Duration = Field(300.0, description="deadline for a whole scan, retries included")
    page_size: int = Field(1000, ge=1, le=1000, description="jobs per list request (1 to 1000)")
    max_jobs: int = Field(200_000, ge=1, description="most jobs one scan lists")
    max_job_series: int = Field(
        2000, ge=0, description="most per-job series in each per-job metric"
    )
    ca_bundle: Path | None = Field(None, description="CA bundle file for TLS to the CTS")
    max_response_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="largest CTS response body read, in bytes"
    )
    web_config_file: Path | None = Field(
        None, description="TLS and basic auth for /metrics (exporter-toolkit web config file)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="least severe level logged"
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    demo: bool = Field(False, description="run against a built-in simulated CTS")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then the environment, then secret files where the machine has them."""
        sources = [init_settings, env_settings]
        if SECRETS_DIR.is_dir():
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=SECRETS_DIR))
        return tuple(sources)

    @model_validator(mode="after")
    def _needs_a_cts(self) -> ExporterSettings:
        if self.demo:
            return self
        if self.cts_url is None:
            raise ValueError(f"the CTS URL is missing: give --cts-url or {ENV_PREFIX}CTS_URL")
        if self.cts_token_file is None and self.cts_token is None:
            raise ValueError(
                f"the CTS token is missing: give --cts-token-file, or {ENV_PREFIX}CTS_TOKEN_FILE "
                f"or {ENV_PREFIX}CTS_TOKEN in the environment"
            )
        return self


# Settings that have no flag: secrets must not appear in a process listing.
ENVIRONMENT_ONLY = frozenset({"cts_token"})
