"""Shared fixtures of the engine unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from engine_service.core.engine import Engine
from tests.unit.engine.scheduler_harness import Probe, new_engine, registry_with

# -- scheduler tests ----------------------------------------------------------------------

EngineFactory = Callable[..., Engine]


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def engines(probe: Probe) -> AsyncIterator[EngineFactory]:
    """Makes engines (the probe registered as `probe` unless `actions` is given); every
    one is stopped at teardown."""
    made: list[Engine] = []

    def make(*args: Any, **kwargs: Any) -> Engine:
        kwargs.setdefault("actions", registry_with(probe))
        engine = new_engine(*args, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.stop()


@pytest.fixture
def engine(engines: EngineFactory) -> Engine:
    return engines()
