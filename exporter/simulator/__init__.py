"""A simulated CTS with a simulated CSE, so the exporter can run without a real CTS.

`start_simulator(options)` serves it in the running event loop; `world.World` is the
simulation itself, usable without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from pydantic import Field

from exporter.server import EmbeddedServer, listening_socket
from exporter.simulator.api import SimulatedCts, Tokens
from exporter.simulator.faults import FaultRules, quiet_uvicorn_about_cut_responses
from exporter.simulator.world import World, WorldSettings

__all__ = ["Simulator", "SimulatorOptions", "WorldSettings", "start_simulator"]

logger = logging.getLogger(__name__)

# The longest the driver sleeps between looks at the world, so control-API changes (a resumed
# CSE, say) take effect promptly even when no event is due.
_MAX_IDLE_SECONDS = 0.25


class SimulatorOptions(WorldSettings):
    """Where the simulated CTS listens, its tokens, and the world's settings."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    admin_token: str | None = Field(default=None, description="generated when absent")
    admin_token_file: Path | None = None
    user_tokens_file: Path | None = None


@dataclass
class Simulator:
    """A running simulated CTS."""

    url: str
    admin_token: str
    user_tokens: dict[str, str]
    world: World
    faults: FaultRules


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, as token files must be."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    path.chmod(0o600)


def resolve_tokens(options: SimulatorOptions) -> Tokens:
    """The admin token (given, read from its file, or generated) and one token per user.

    An existing non-empty admin token file is read, otherwise a new token is written there.
    The user tokens file is rewritten with every user's token, keeping tokens it already held.
    """
    admin_token = options.admin_token
    token_file = options.admin_token_file
    if admin_token is None and token_file is not None and token_file.is_file():
        admin_token = token_file.read_text().strip() or None
    if admin_token is None:
        admin_token = secrets.token_urlsafe(24)
        if token_file is not None:
            _write_private(token_file, admin_token + "\n")

    known: dict[str, str] = {}
    users_file = options.user_tokens_file
    if users_file is not None and users_file.is_file():
        with contextlib.suppress(ValueError):
            loaded = json.loads(users_file.read_text())
            if isinstance(loaded, dict):
                known = {str(user): str(token) for user, token in loaded.items()}
    user_tokens = {user: known.get(user) or secrets.token_urlsafe(24) for user in options.users}
    if users_file is not None:
        _write_private(users_file, json.dumps(user_tokens, indent=2) + "\n")
    return Tokens(admin_token=admin_token, user_tokens=user_tokens)


async def _drive(world: World) -> None:
    """Apply the world's events as they fall due, for as long as the simulator runs."""
    while True:
        world.advance()
        due = world.next_due()
        delay = _MAX_IDLE_SECONDS if due is None else due - world.clock.now()
        await asyncio.sleep(min(max(delay, 0.001), _MAX_IDLE_SECONDS))


@contextlib.asynccontextmanager
async def start_simulator(options: SimulatorOptions | None = None) -> AsyncIterator[Simulator]:
    """Serve a simulated CTS in the running event loop until the block exits."""
    options = options or SimulatorOptions()
    tokens = resolve_tokens(options)
    settings = WorldSettings.model_validate(
        options.model_dump(include=set(WorldSettings.model_fields))
    )
    world = World(settings)
    # A large preload takes seconds; keep the event loop free for whoever shares it.
    await asyncio.to_thread(world.start)
    cts = SimulatedCts(world, tokens)

    listener = listening_socket(options.host, options.port)
    port = listener.getsockname()[1]
    quiet_uvicorn_about_cut_responses()
    config = uvicorn.Config(
        cts.app, lifespan="off", log_config=None, access_log=False, log_level="warning"
    )
    server = EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    driving = asyncio.create_task(_drive(world))
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the simulated CTS stopped while starting")
            await asyncio.sleep(0.01)
        host = f"[{options.host}]" if ":" in options.host else options.host
        yield Simulator(
            url=f"http://{host}:{port}",
            admin_token=tokens.admin_token,
            user_tokens=dict(tokens.user_tokens),
            world=world,
            faults=cts.faults,
        )
    finally:
        driving.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await driving
        await serving
        listener.close()
