"""The ``cts-import-exporter`` command: the exporter itself, and its helper commands.

``cts-import-exporter [flags]`` runs the exporter; ``simulate`` runs the simulated CTS;
``status`` and ``wait`` look up one job's import.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import ValidationError

from exporter import __version__, logs
from exporter.cts import CaBundleError, TokenError, TokenSource
from exporter.settings import (
    DEFAULT_PORT,
    ENV_PREFIX,
    ENVIRONMENT_ONLY,
    ExporterSettings,
)

PROG = "cts-import-exporter"

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "simulate":
        from exporter.simulator.cli import main as simulate

        return simulate(args[1:])
    if args and args[0] in ("status", "wait"):
        from exporter.lookup import main as lookup

        return lookup(args)

    settings = load_settings(args)
    if settings is None:
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if settings.demo:
        from exporter.demo import run_demo

        return asyncio.run(run_demo(settings))

    from exporter.runtime import Exporter
    from exporter.webconfig import WebConfigError

    assert settings.cts_url is not None
    try:
        exporter = Exporter(settings, settings.cts_url, token_source(settings))
    except (TokenError, CaBundleError, WebConfigError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    if _crosses_network_in_clear(settings.cts_url):
        log.warning("the CTS URL is plain http: the admin token crosses the network in clear")
    return asyncio.run(exporter.serve())


def load_settings(args: Sequence[str]) -> ExporterSettings | None:
    """Settings from flags, environment and secret files; None after printing what is wrong."""
    namespace, unknown = exporter_parser().parse_known_args(args)
    if unknown:
        # argparse would echo the values too, and a mistyped flag's value may be the token.
        flags = sorted({word.split("=", 1)[0] for word in unknown if word.startswith("-")})
        named = ", ".join(flags) if flags else "a value without a flag"
        print(f"{PROG}: unrecognised arguments: {named} (values not shown)", file=sys.stderr)
        return None
    given = {name: value for name, value in vars(namespace).items() if value is not None}
    return settings_from(given)


def settings_from(given: Mapping[str, Any]) -> ExporterSettings | None:
    """Settings from values given on a command line, then the environment and secret files;
    None after printing, one line per problem, what is wrong."""
    try:
        return ExporterSettings(**given)
    except ValidationError as error:
        for problem in error.errors(include_url=False, include_input=False):
            print(f"{PROG}: {_explain(problem)}", file=sys.stderr)
        return None


def _crosses_network_in_clear(url: str) -> bool:
    """True for a plain-http URL to a host other than this machine."""
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1")


def token_source(settings: ExporterSettings) -> TokenSource:
    """Where the CTS token comes from: the file when one is named, else the variable."""
    if settings.cts_token_file is not None:
        return TokenSource(path=settings.cts_token_file)
    assert settings.cts_token is not None
    return TokenSource(value=settings.cts_token.get_secret_value())


def exporter_parser() -> argparse.ArgumentParser:
    """The exporter's flags, one per setting, each naming its variable and default."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Scan the CDM Task Service for completed jobs, decide whether the CSE imported each "
            "one, and serve the picture as Prometheus metrics."
        ),
        epilog=(
            f"Other commands: '{PROG} simulate --help' (a simulated CTS), "
            f"'{PROG} status --help' and '{PROG} wait --help' (one job's import). "
            f"The token is read from --cts-token-file, or from {ENV_PREFIX}CTS_TOKEN or "
            f"{ENV_PREFIX}CTS_TOKEN_FILE in the environment, never from a flag. "
            f"The default port {DEFAULT_PORT} lies in the range Prometheus's port allocation "
            "list keeps for exporters; change it with --listen-address."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Abbreviations would let "--cts-token SECRET" pass as --cts-token-file.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, field in ExporterSettings.model_fields.items():
        if name in ENVIRONMENT_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        variable = ENV_PREFIX + name.upper()
        if field.annotation is bool:
            parser.add_argument(
                flag,
                action="store_const",
                const=True,
                default=None,
                help=f"{field.description} [env {variable}]",
            )
            continue
        default = "none" if field.default is None else _show_default(name, field.default)
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            choices=choices,
            metavar="{" + ",".join(choices) + "}" if choices else name.split("_")[-1].upper(),
            help=f"{field.description} [env {variable}] (default: {default})",
        )
    return parser


_DURATIONS = {"scan_interval", "lookback", "request_timeout", "scan_timeout"}


def _show_default(name: str, value: object) -> str:
    if name in _DURATIONS and isinstance(value, float):
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
            if value >= seconds and value % seconds == 0:
                return f"{value / seconds:g}{unit}"
        return f"{value:g}s"
    return str(value)


def _explain(problem: object) -> str:
    """One line for a settings problem, naming the flag it came from."""
    assert isinstance(problem, dict)
    message = str(problem["msg"]).removeprefix("Value error, ")
    location = problem.get("loc") or ()
    if not location:
        return message
    name = str(location[0])
    return f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()}): {message}"
