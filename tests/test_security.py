"""The exporter keeps its admin token secret, trusts only verified CTS certificates, guards its
own endpoints as its web config says, and never asks the CTS to change anything."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import bcrypt
import httpx
import pytest

from exporter.cli import main
from exporter.cts import TokenError, TokenSource
from exporter.metrics import ExporterMetrics
from exporter.runtime import Exporter
from exporter.server import create_app
from exporter.settings import ExporterSettings
from tests.exposition import samples, value
from tests.misbehaving import TOKEN, CtsStandIn, Status, ago, job
from tests.test_exporter_process import exporter_process, write_token
from tests.test_faults import QUICK_RETRY

pytestmark = pytest.mark.anyio

ROTATED = "tok-rotated-5a6b7c8d9e-admin"
CTS_CALLS = {"/", "/whoami", "/admin/jobs", "/jobs"}


# ---- a local certificate authority ----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA and a certificate it signed for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_pki(directory: Path) -> Pki:
    """A fresh CA and a server certificate for IP 127.0.0.1, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2",
            "-extfile", "server.ext")  # fmt: skip
    return Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """Undo the log set-up that ``main`` does, so later tests capture logs as before."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def exporter_for(url: str, token: TokenSource, **settings: Any) -> Exporter:
    chosen: dict[str, Any] = {"request_timeout": 1, "scan_timeout": 5}
    chosen.update(settings)
    configured = ExporterSettings(cts_url=url, cts_token="unused", **chosen)
    return Exporter(configured, url, token, retry=QUICK_RETRY)


# ---- the token ------------------------------------------------------------------------------


async def test_a_rotated_token_file_is_used_by_the_next_scan(tmp_path: Path) -> None:
    token_file = write_token(tmp_path, TOKEN)
    with CtsStandIn() as cts:
        exporter = exporter_for(cts.url, TokenSource(path=token_file))
        await exporter.scan()
        token_file.write_text(ROTATED + "\n")
        cts.token = ROTATED
        await exporter.scan()
        await exporter.client.aclose()
    sent = [seen.headers["authorization"] for seen in cts.requests("/")]
    assert sent == [f"Bearer {TOKEN}", f"Bearer {ROTATED}"]
    assert value(samples(exporter.metrics), "cts_exporter_last_scan_success") == 1


async def test_the_token_appears_nowhere_the_exporter_writes_even_when_the_cts_echoes_it(
    tmp_path: Path,
) -> None:
    token_file = write_token(tmp_path, TOKEN)
    with CtsStandIn(echo_auth_in_errors=True) as cts:
        cts.jobs = [job("a", completed=ago(60))]
        with exporter_process(
            cts.url, token_file, "--log-level", "debug", "--log-format", "json"
        ) as exporter:
            await exporter.wait_for("a first scan", lambda s: s.get(SUCCESS) == 1)
            argv = await anyio.Path(f"/proc/{exporter.process.pid}/cmdline").read_bytes()

            # The new token is refused and echoed back by the CTS; then a proxy echoes it in a 502.
            token_file.write_text(ROTATED)
            await exporter.wait_for("a refused scan", lambda s: s.get(SUCCESS) == 0)
            cts.token = ROTATED
            cts.fail("/whoami", Status(502, body=f"bad gateway for Bearer {ROTATED}".encode()))
            refused = await everything_served(exporter.url)
            cts.heal()
            await exporter.wait_for("recovery", lambda s: s.get(SUCCESS) == 1)
            served = refused + await everything_served(exporter.url)
            code, output = exporter.stop()

    assert code == 0
    assert cts.requests("/")[-1].headers["authorization"] == f"Bearer {ROTATED}"
    assert '"level": "debug"' in output or '"level": "info"' in output
    assert "HTTP 401" in output
    for secret in (TOKEN, ROTATED):
        assert secret not in output
        assert secret not in served
        assert secret.encode() not in argv


SUCCESS = ("cts_exporter_last_scan_success", frozenset())


async def everything_served(url: str) -> str:
    async with httpx.AsyncClient() as client:
        pages = [await client.get(f"{url}{path}") for path in ("/metrics", "/", "/healthz")]
    return "".join(page.text for page in pages)


@pytest.mark.parametrize("broken", ["tok-first-half\tsecond-half", "tok-first-half second-half"])
def test_a_token_that_cannot_travel_in_a_header_is_refused_without_quoting_it(
    tmp_path: Path, broken: str
) -> None:
    # Sent anyway, the HTTP library's error would quote the whole header into the logs.
    with pytest.raises(TokenError, match="control or non-ASCII") as from_file:
        TokenSource(path=write_token(tmp_path, broken))
    with pytest.raises(TokenError) as from_variable:
        TokenSource(value=broken)
    assert "half" not in str(from_file.value) + str(from_variable.value)


async def test_a_token_file_broken_while_running_fails_scans_as_auth_until_fixed(
    tmp_path: Path,
) -> None:
    token_file = write_token(tmp_path, TOKEN)
    with CtsStandIn() as cts:
        exporter = exporter_for(cts.url, TokenSource(path=token_file))
        token_file.write_text("tok-first-half\x00second-half")
        await exporter.scan()
        broken = samples(exporter.metrics)
        error = exporter.metrics.health.last_error or ""
        token_file.write_text(TOKEN)
        await exporter.scan()
        await exporter.client.aclose()
    assert value(broken, "cts_exporter_scan_errors_total", reason="auth") == 1
    assert "half" not in error
    assert value(samples(exporter.metrics), "cts_exporter_last_scan_success") == 1
    assert len(cts.requests("/")) == 1


def run_cli(capsys: pytest.CaptureFixture[str], *args: str, **environment: str) -> tuple[int, str]:
    """``main`` with these flags and variables; its exit code and everything it printed."""
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        code = main(list(args))
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    "args",
    [
        ["--cts-url", "http://127.0.0.1:9", "--cts-token", TOKEN],
        ["--cts-url", "http://127.0.0.1:9", f"--cts-token={TOKEN}"],
        ["--cts-url", "http://127.0.0.1:9", "--cts-tok", TOKEN],
        ["--cts-url", "http://127.0.0.1:9", TOKEN],
    ],
    ids=["flag-and-value", "flag-equals-value", "abbreviation", "stray-value"],
)
def test_a_token_on_the_command_line_is_refused_and_not_echoed(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, printed = run_cli(capsys, *args)
    assert code == 2
    assert TOKEN not in printed
    assert "unrecognised arguments" in printed


def test_a_settings_error_does_not_echo_the_token_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, printed = run_cli(
        capsys, "--cts-url", "not a url", "--scan-interval", "soon", CTS_EXPORTER_CTS_TOKEN=TOKEN
    )
    assert code == 2
    assert "--scan-interval" in printed
    assert TOKEN not in printed


def test_a_token_file_with_a_broken_token_is_one_line_without_the_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keep_logging: None
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-part-one\npart-two\n")
    code, printed = run_cli(
        capsys, "--cts-url", "http://127.0.0.1:9", "--cts-token-file", str(token_file)
    )
    assert code == 2
    assert printed.count("\n") == 1
    assert "part" not in printed.replace(str(token_file), "")


# ---- TLS to the CTS -------------------------------------------------------------------------


async def test_a_cts_certificate_signed_by_the_ca_bundle_is_trusted(pki: Pki) -> None:
    with CtsStandIn(tls=pki.server_context()) as cts:
        exporter = exporter_for(cts.url, TokenSource(value=TOKEN), ca_bundle=pki.ca)
        await exporter.scan()
        await exporter.client.aclose()
    assert value(samples(exporter.metrics), "cts_exporter_last_scan_success") == 1
    assert cts.requests("/admin/jobs")


@pytest.mark.parametrize("bundle", ["none", "other"])
async def test_an_untrusted_cts_certificate_fails_closed_before_the_token_is_sent(
    pki: Pki, other_pki: Pki, bundle: str
) -> None:
    ca = None if bundle == "none" else other_pki.ca
    with CtsStandIn(tls=pki.server_context()) as cts:
        exporter = exporter_for(cts.url, TokenSource(value=TOKEN), ca_bundle=ca)
        await exporter.scan()
        await exporter.client.aclose()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_scan_errors_total", reason="connect") == 1
    error = exporter.metrics.health.last_error or ""
    assert error.startswith("GET /: the CTS's TLS certificate is not trusted")
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert cts.requests() == []


@pytest.mark.parametrize("bundle", ["missing", "not-pem"])
def test_a_ca_bundle_that_cannot_be_read_stops_the_start_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keep_logging: None, bundle: str
) -> None:
    path = tmp_path / "ca.pem"
    if bundle == "not-pem":
        path.write_text("hello\n")
    code, printed = run_cli(
        capsys, "--cts-url", "https://127.0.0.1:9", "--ca-bundle", str(path),
        CTS_EXPORTER_CTS_TOKEN=TOKEN,
    )  # fmt: skip
    assert code == 2
    assert printed.count("\n") == 1
    assert str(path) in printed


# ---- the exporter's own endpoints -----------------------------------------------------------


def hashed(password: str, prefix: str = "$2b$") -> str:
    return prefix + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()[4:]


async def get(app: Any, path: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://exporter", auth=auth
    ) as client:
        return await client.get(path)


async def test_basic_auth_lets_known_users_in_and_asks_everyone_else() -> None:
    users = {"prometheus": hashed("s3cret").encode(), "grafana": hashed("pw", "$2y$").encode()}
    app = create_app(ExporterMetrics(10), users)

    assert (await get(app, "/metrics", ("prometheus", "s3cret"))).status_code == 200
    assert (await get(app, "/metrics", ("prometheus", "s3cret"))).status_code == 200
    assert (await get(app, "/metrics", ("grafana", "pw"))).status_code == 200
    assert "cts_exporter_build_info" in (await get(app, "/metrics", ("grafana", "pw"))).text
    for auth in [None, ("prometheus", "wrong"), ("nobody", "s3cret"), ("prometheus", "x" * 100)]:
        answer = await get(app, "/metrics", auth)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith('Basic realm="cts-import-exporter"')
        assert "cts_" not in answer.text
    assert (await get(app, "/", None)).status_code == 401
    assert (await get(app, "/healthz", None)).status_code == 200


async def test_a_malformed_authorization_header_is_a_401() -> None:
    app = create_app(ExporterMetrics(10), {"prometheus": hashed("s3cret").encode()})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
        for header in ["Basic !!!", "Basic " + "cHJvbWV0aGV1cw==", "Bearer abc", "Basic"]:
            answer = await client.get("/metrics", headers={"Authorization": header})
            assert answer.status_code == 401


def write_web_config(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text)
    return path


async def test_the_exporter_serves_https_behind_basic_auth_from_its_web_config(
    tmp_path: Path, pki: Pki
) -> None:
    config = write_web_config(
        pki.cert.parent,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: {hashed('s3cret')}\n",
    )
    with CtsStandIn() as cts:
        cts.jobs = [job("a", completed=ago(60))]
        with exporter_process(
            cts.url, write_token(tmp_path, TOKEN), "--web-config-file", str(config)
        ) as exporter:
            url = exporter.url.replace("http://", "https://")
            async with httpx.AsyncClient(verify=pki.client_context(), timeout=5) as client:

                async def metrics() -> httpx.Response:
                    return await client.get(f"{url}/metrics", auth=("prometheus", "s3cret"))

                answer = await poll_until_scanned(metrics)
                refused = await client.get(f"{url}/metrics")
                health = await client.get(f"{url}/healthz")
            async with httpx.AsyncClient(timeout=5) as plain:
                with pytest.raises(httpx.HTTPError):
                    await plain.get(f"{exporter.url}/metrics")
            code, output = exporter.stop()

    assert answer.status_code == 200
    assert "cts_import_jobs" in answer.text
    assert refused.status_code == 401
    assert health.status_code == 200
    assert code == 0
    assert "https://127.0.0.1" in output
    assert "behind basic auth" in output


async def poll_until_scanned(fetch: Any) -> httpx.Response:
    """Fetch until the answer shows a successful scan."""
    for _ in range(200):
        try:
            answer: httpx.Response = await fetch()
            if "cts_exporter_last_scan_success 1.0" in answer.text:
                return answer
        except httpx.TransportError:
            pass  # not listening yet
        await anyio.sleep(0.1)
    raise TimeoutError("no successful scan")


BAD_WEB_CONFIGS = {
    "not-yaml": ("basic_auth_users: [unclosed\n", "not valid YAML at line"),
    "unknown-key": ("http_server_config:\n  http2: true\n", "unsupported key http_server_config"),
    "plain-password": ("basic_auth_users:\n  prometheus: s3cret\n", "not a bcrypt hash"),
    "cert-missing": (
        "tls_server_config:\n  cert_file: absent.crt\n  key_file: absent.key\n",
        "cannot read",
    ),
    "key-missing": ("tls_server_config:\n  cert_file: server.crt\n", "both cert_file and key_file"),
    "key-mismatch": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: ca.key\n",
        "certificate or key unusable",
    ),
    "auth-type": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAnyClientCert\n",
        "client_auth_type must be one of",
    ),
    "not-a-mapping": ("- tls_server_config\n", "must be a mapping"),
}


@pytest.mark.parametrize("name", [*BAD_WEB_CONFIGS, "absent-file"])
def test_a_bad_web_config_file_is_one_clear_line_and_exit_code_2(
    capsys: pytest.CaptureFixture[str], pki: Pki, keep_logging: None, name: str
) -> None:
    if name == "absent-file":
        path, expected = pki.cert.parent / "absent.yml", "cannot read web config"
    else:
        text, expected = BAD_WEB_CONFIGS[name]
        path = pki.cert.parent / f"{name}.yml"
        path.write_text(text)
    code, printed = run_cli(
        capsys, "--cts-url", "http://127.0.0.1:9", "--web-config-file", str(path),
        CTS_EXPORTER_CTS_TOKEN=TOKEN,
    )  # fmt: skip
    assert code == 2
    assert printed.count("\n") == 1
    assert printed.startswith("cts-import-exporter: ")
    assert expected in printed


def test_the_web_config_file_is_also_an_environment_variable(
    capsys: pytest.CaptureFixture[str], pki: Pki, keep_logging: None
) -> None:
    path = pki.cert.parent / "env.yml"
    path.write_text("basic_auth_users:\n  prometheus: plain\n")
    code, printed = run_cli(
        capsys, "--cts-url", "http://127.0.0.1:9",
        CTS_EXPORTER_CTS_TOKEN=TOKEN, CTS_EXPORTER_WEB_CONFIG_FILE=str(path),
    )  # fmt: skip
    assert code == 2
    assert "not a bcrypt hash" in printed


# ---- least privilege ------------------------------------------------------------------------


@pytest.mark.parametrize("admin", [True, False])
async def test_a_scan_cycle_sends_nothing_but_gets_to_read_only_endpoints(
    admin: bool, tmp_path: Path
) -> None:
    with CtsStandIn(admin=admin) as cts:
        cts.jobs = [job(f"j{n}", completed=ago(60 * (n + 1))) for n in range(5)]
        with exporter_process(cts.url, write_token(tmp_path, TOKEN)) as exporter:
            await exporter.wait_for("three scans", lambda s: s.get(SCANS, 0) >= 3)
            code, _ = exporter.stop()
    methods = {seen.method for seen in cts.requests()}
    paths = {seen.path for seen in cts.requests()}
    assert methods == {"GET"}
    assert paths <= CTS_CALLS
    assert ("/admin/jobs" in paths) is admin
    assert code == 0


SCANS = ("cts_exporter_scans_total", frozenset())
