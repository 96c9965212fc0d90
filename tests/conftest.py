"""Shared pytest set-up: async tests run on asyncio through anyio's plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Every ``@pytest.mark.anyio`` test runs on asyncio, the loop the exporter uses."""
    return "asyncio"
