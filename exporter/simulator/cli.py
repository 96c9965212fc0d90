"""The `simulate` subcommand: serve a simulated CTS until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from exporter import settings
from exporter.simulator import SimulatorOptions, start_simulator
from exporter.simulator.world import WorldSettings

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9854"

# World settings offered as flags beyond the ones declared one by one below.
_WORLD_FLAGS = (
    "arrival_interval", "job_error_share", "job_cancel_share", "no_importer_share",
    "import_error_share", "import_stuck_share", "import_duration", "pickup_delay",
    "restart_delay", "outage_interval", "outage_duration", "backlog_jobs", "backlog_outage",
)
_DURATION_SETTINGS = {
    "arrival_interval", "import_duration", "pickup_delay", "restart_delay", "outage_interval",
    "outage_duration", "backlog_outage", "lookback",
}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `2s`, `500ms`, `5m`, `12h`, `7d` or `1w`; zero is allowed."""
    try:
        return settings.parse_duration(text, allow_zero=True)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) as a host and a port."""
    try:
        return settings.split_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """The `simulate` subcommand's flags."""
    defaults = WorldSettings()
    parser = argparse.ArgumentParser(
        prog="cts-import-exporter simulate",
        description="Serve a simulated CTS whose simulated CSE imports completed jobs, for "
        "demos, tests and benchmarks. Durations are simulated time; --speed divides them.",
    )
    parser.add_argument("--listen-address", type=parse_listen_address,
                        default=parse_listen_address(DEFAULT_LISTEN_ADDRESS),
                        help=f"HOST:PORT to serve on; port 0 picks one "
                        f"(default {DEFAULT_LISTEN_ADDRESS})")
    parser.add_argument("--seed", type=int, default=None, help="random seed for a repeatable run")
    parser.add_argument("--jobs", type=int, default=defaults.jobs,
                        help=f"jobs preloaded over the look-back window (default {defaults.jobs})")
    parser.add_argument("--speed", type=float, default=defaults.speed,
                        help="divides every simulated duration and interval (default 1)")
    parser.add_argument("--lookback", type=parse_duration, default=defaults.lookback,
                        help="window the preloaded jobs are spread over (default 7d)")
    parser.add_argument("--users", default=",".join(defaults.users),
                        help="comma-separated users who submit jobs (default %(default)s)")
    parser.add_argument("--admin-token-file", type=Path,
                        help="read the admin token from this file, or write a new one there")
    parser.add_argument("--user-tokens-file", type=Path,
                        help="write a JSON object of user to token here")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    world = parser.add_argument_group("simulated world (durations take 30s, 5m, 2h, 1d)")
    for name in _WORLD_FLAGS:
        field = WorldSettings.model_fields[name]
        kind = parse_duration if name in _DURATION_SETTINGS else type(field.default)
        world.add_argument("--" + name.replace("_", "-"), type=kind, default=field.default,
                           help=f"{field.description} (default {field.default:g})")
    return parser


def options_from(arguments: argparse.Namespace) -> SimulatorOptions:
    """Simulator options from parsed flags; raises `ValidationError` on bad values."""
    host, port = arguments.listen_address
    world = {name: getattr(arguments, name) for name in _WORLD_FLAGS}
    return SimulatorOptions(
        host=host,
        port=port,
        seed=arguments.seed,
        jobs=arguments.jobs,
        speed=arguments.speed,
        lookback=arguments.lookback,
        users=[user.strip() for user in arguments.users.split(",") if user.strip()],
        admin_token_file=arguments.admin_token_file,
        user_tokens_file=arguments.user_tokens_file,
        **world,
    )


async def serve(options: SimulatorOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log = logging.getLogger("exporter.simulator")
    async with start_simulator(options) as simulator:
        log.info("simulated CTS listening on %s with %d jobs", simulator.url,
                 len(simulator.world.jobs))
        if options.admin_token_file is not None:
            log.info("admin token in %s", options.admin_token_file)
        else:
            # Nowhere else to find it: show it once so the user can call the CTS.
            print(f"admin token: {simulator.admin_token}", flush=True)
        if options.user_tokens_file is not None:
            log.info("user tokens in %s", options.user_tokens_file)
        await stop.wait()
        log.info("stopping")


def main(argv: list[str]) -> int:
    """Run the `simulate` subcommand; 0 after a clean stop, 2 for bad flags."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        options = options_from(arguments)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(str(part) for part in e['loc']).replace('_', '-')}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        parser.error(problems)
    logging.basicConfig(level=arguments.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(options))
    except OSError as error:
        logging.getLogger("exporter.simulator").error("cannot serve: %s", error)
        return 1
    return 0
