"""``cts-import-exporter --demo``: the exporter against a simulated CTS in the same process."""

from __future__ import annotations

import logging

from exporter.cts import TokenSource
from exporter.runtime import Exporter
from exporter.settings import ExporterSettings
from exporter.simulator import SimulatorOptions, start_simulator

log = logging.getLogger(__name__)

# Enough jobs for every import status to show at once, sped up so that statuses change while
# someone watches.
DEMO_JOBS = 300
DEMO_SPEED = 10.0


async def run_demo(settings: ExporterSettings) -> int:
    """Start a simulated CTS on a free loopback port and run the exporter against it."""
    options = SimulatorOptions(host="127.0.0.1", port=0, jobs=DEMO_JOBS, speed=DEMO_SPEED)
    async with start_simulator(options) as simulator:
        log.info(
            "demo: simulated CTS at %s with %d jobs, time sped up %gx",
            simulator.url,
            DEMO_JOBS,
            DEMO_SPEED,
        )
        exporter = Exporter(settings, simulator.url, TokenSource(value=simulator.admin_token))
        return await exporter.serve()
