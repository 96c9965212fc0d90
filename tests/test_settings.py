"""Settings from flags, the environment and secret files, and the --help that explains them."""

from __future__ import annotations

import pytest

from exporter.cli import PROG, exporter_parser, load_settings
from exporter.settings import ExporterSettings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604800),
        ("30", 30),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("1w", 604800),
        (45, 45),
    ],
)
def test_durations_accept_units_and_plain_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-3s", "0", "ten minutes", "1h30m"])
def test_durations_refuse_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_setting_reads_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTS_EXPORTER_CTS_URL", "https://cts.example.org/services/cts/")
    monkeypatch.setenv("CTS_EXPORTER_CTS_TOKEN", "from-the-environment")
    monkeypatch.setenv("CTS_EXPORTER_SCAN_INTERVAL", "2m")
    monkeypatch.setenv("CTS_EXPORTER_PAGE_SIZE", "250")
    monkeypatch.setenv("CTS_EXPORTER_LOG_FORMAT", "json")
    settings = ExporterSettings()
    assert settings.cts_url == "https://cts.example.org/services/cts"
    assert settings.cts_token is not None
    assert settings.cts_token.get_secret_value() == "from-the-environment"
    assert settings.scan_interval == 120
    assert settings.page_size == 250
    assert settings.log_format == "json"


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTS_EXPORTER_CTS_TOKEN", "t")
    monkeypatch.setenv("CTS_EXPORTER_SCAN_INTERVAL", "2m")
    settings = load_settings(["--cts-url", "http://cts:5000", "--scan-interval", "15s"])
    assert settings is not None
    assert settings.scan_interval == 15


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTS_EXPORTER_CTS_TOKEN", "t")
    settings = load_settings(["--cts-url", "http://cts:5000"])
    assert settings is not None
    assert settings.listen_address == "0.0.0.0:9853"
    assert settings.scan_interval == 60
    assert settings.lookback == 7 * 86400
    assert settings.page_size == 1000


def test_help_names_each_flags_variable_and_default() -> None:
    text = exporter_parser().format_help()
    for flag, variable, default in [
        ("--cts-url", "CTS_EXPORTER_CTS_URL", "none"),
        ("--scan-interval", "CTS_EXPORTER_SCAN_INTERVAL", "1m"),
        ("--lookback", "CTS_EXPORTER_LOOKBACK", "7d"),
        ("--listen-address", "CTS_EXPORTER_LISTEN_ADDRESS", "0.0.0.0:9853"),
        ("--page-size", "CTS_EXPORTER_PAGE_SIZE", "1000"),
    ]:
        assert flag in text
        assert f"env {variable}" in " ".join(text.split())
        assert f"(default: {default})" in " ".join(text.split())


def test_the_token_has_no_flag() -> None:
    with pytest.raises(SystemExit):
        exporter_parser().parse_args(["--cts-token", "secret"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cts-url", "cts.example.org"],
            "--cts-url (CTS_EXPORTER_CTS_URL): 'cts.example.org' is not an http:// or https:// URL",
        ),
        (["--cts-url", "http://c", "--page-size", "1001"], "--page-size"),
        (["--cts-url", "http://c", "--lookback", "a week"], "is not a duration"),
        (["--cts-url", "http://c", "--listen-address", "9853"], "is not HOST:PORT"),
        ([], "the CTS URL is missing"),
    ],
)
def test_bad_settings_are_one_line_each_naming_the_flag(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTS_EXPORTER_CTS_TOKEN", "t")
    assert load_settings(args) is None
    error = capsys.readouterr().err
    assert error.startswith(f"{PROG}: ")
    assert message in error


def test_a_missing_token_is_explained(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CTS_EXPORTER_CTS_TOKEN", raising=False)
    monkeypatch.delenv("CTS_EXPORTER_CTS_TOKEN_FILE", raising=False)
    assert load_settings(["--cts-url", "http://cts:5000"]) is None
    assert "the CTS token is missing" in capsys.readouterr().err


def test_the_demo_needs_no_cts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTS_EXPORTER_CTS_TOKEN", raising=False)
    settings = load_settings(["--demo"])
    assert settings is not None and settings.demo
