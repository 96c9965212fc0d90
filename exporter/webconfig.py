"""TLS and basic auth for the exporter's own endpoints, from a web config file.

The file uses the format of the Prometheus exporter-toolkit, which Prometheus operators already
write for other exporters::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
    basic_auth_users:
      prometheus: $2y$10$...   # a bcrypt hash, e.g. from htpasswd -nBC 10 prometheus

Only the keys above, plus ``client_ca_file`` and ``client_auth_type`` for client certificates,
are understood. Any other key is refused rather than ignored, so that a setting the operator
relies on is never silently missing. Relative paths are read from the file's directory.
``/healthz`` answers without credentials: it says only "ok", and probes that cannot carry a
password must reach it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import bcrypt
import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz"})
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TOP_KEYS = frozenset({"tls_server_config", "basic_auth_users"})
_TLS_KEYS = frozenset({"cert_file", "key_file", "client_ca_file", "client_auth_type"})
_REALM = 'Basic realm="cts-import-exporter", charset="UTF-8"'


class WebConfigError(ValueError):
    """The web config file cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class ServerTls:
    """The certificate the exporter presents, and whether clients must present one."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE


@dataclass(frozen=True)
class WebConfig:
    """What the web config file asks for; an empty one changes nothing."""

    tls: ServerTls | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)

    def uvicorn_options(self) -> dict[str, Any]:
        """The TLS options of ``uvicorn.Config`` for this config."""
        if self.tls is None:
            return {}
        return {
            "ssl_certfile": str(self.tls.cert_file),
            "ssl_keyfile": str(self.tls.key_file),
            "ssl_ca_certs": str(self.tls.client_ca_file) if self.tls.client_ca_file else None,
            "ssl_cert_reqs": self.tls.client_auth,
        }


def load_web_config(path: Path) -> WebConfig:
    """Read and check a web config file; raises WebConfigError naming the problem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise WebConfigError(f"cannot read web config {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"web config {path} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise WebConfigError(f"web config {path} is not valid YAML{where}") from None

    if document is None:
        return WebConfig()
    top = _mapping(document, f"web config {path}", _TOP_KEYS)
    tls = None
    if top.get("tls_server_config") is not None:
        tls = _server_tls(top["tls_server_config"], path)
    users = _users(top.get("basic_auth_users") or {}, path)
    return WebConfig(tls=tls, users=users)


def _mapping(value: object, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebConfigError(f"{what} must be a mapping")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        supported = ", ".join(sorted(allowed))
        named = ", ".join(unknown)
        raise WebConfigError(f"{what}: unsupported key {named} (supported: {supported})")
    return value


def _server_tls(value: object, path: Path) -> ServerTls:
    what = f"web config {path}: tls_server_config"
    section = _mapping(value, what, _TLS_KEYS)
    files = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        name = section.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or not name:
            raise WebConfigError(f"{what}: {key} must be a file name")
        files[key] = path.parent / name
    if "cert_file" not in files or "key_file" not in files:
        raise WebConfigError(f"{what}: both cert_file and key_file are needed")

    auth_type = section.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"{what}: client_auth_type must be one of {', '.join(CLIENT_AUTH_TYPES)}"
        )
    client_auth = CLIENT_AUTH_TYPES[auth_type]
    if client_auth == ssl.CERT_REQUIRED and "client_ca_file" not in files:
        raise WebConfigError(f"{what}: RequireAndVerifyClientCert needs client_ca_file")

    # Load everything now, so that a wrong file stops the start instead of every handshake.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files["cert_file"], files["key_file"])
        if "client_ca_file" in files:
            context.load_verify_locations(cafile=files["client_ca_file"])
    except ssl.SSLError as error:
        reason = error.reason or "unreadable"
        raise WebConfigError(f"{what}: certificate or key unusable ({reason})") from None
    except OSError as error:
        name = error.filename or "a file"
        raise WebConfigError(f"{what}: cannot read {name}: {error.strerror}") from None
    return ServerTls(
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        client_ca_file=files.get("client_ca_file"),
        client_auth=client_auth,
    )


def _users(value: object, path: Path) -> dict[str, bytes]:
    what = f"web config {path}: basic_auth_users"
    if not isinstance(value, dict):
        raise WebConfigError(f"{what} must map user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    for name, hashed in value.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise WebConfigError(f"{what}: {name!r} is not a user name")
        if not isinstance(hashed, str) or not _is_bcrypt(hashed):
            raise WebConfigError(f"{what}: the password of {name} is not a bcrypt hash")
        users[name] = hashed.encode()
    return users


def _is_bcrypt(hashed: str) -> bool:
    if len(hashed) != 60 or hashed[:4] not in ("$2a$", "$2b$", "$2y$"):
        return False
    try:
        bcrypt.checkpw(b"", hashed.encode())
    except ValueError:
        return False
    return True


class BasicAuth:
    """ASGI middleware asking for a user and password on every path but ``OPEN_PATHS``.

    bcrypt is slow on purpose, so checks run in a worker thread, and a credential that passed
    once is remembered (as a keyed digest, never in clear) so that each scrape does not pay again.
    An unknown user costs a bcrypt check too, so that timing does not reveal which names exist.
    """

    def __init__(self, app: ASGIApp, users: Mapping[str, bytes]) -> None:
        self.app = app
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._passed: set[bytes] = set()
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=10))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on when its credentials are good, else answer 401."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        credentials = _basic_credentials(header)
        if credentials is not None and await self._allows(*credentials):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"www-authenticate", _REALM.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"Unauthorized\n"})

    async def _allows(self, user: str, password: bytes) -> bool:
        hashed = self._users.get(user)
        digest = hmac.new(
            self._key, user.encode() + b"\0" + password + b"\0" + (hashed or b""), hashlib.sha256
        ).digest()
        if hashed is not None and digest in self._passed:
            return True
        candidate = self._decoy if hashed is None else hashed
        try:
            matches = await anyio.to_thread.run_sync(bcrypt.checkpw, password, candidate)
        except ValueError:  # bcrypt refuses passwords longer than 72 bytes
            return False
        if not (matches and hashed is not None):
            return False
        if len(self._passed) >= 1024:
            self._passed.clear()
        self._passed.add(digest)
        return True


def _basic_credentials(header: bytes) -> tuple[str, bytes] | None:
    """The user and password of a ``Basic`` Authorization header, None when there are none."""
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
