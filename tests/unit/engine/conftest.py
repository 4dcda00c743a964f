"""Shared fixtures of the engine unit tests."""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from engine_service.core.engine import Engine
from tests.unit.engine.scheduler_harness import Probe, new_engine, registry_with


@pytest.fixture(autouse=True)
def _close_the_loop_looptime_opens_for_sync_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """looptime's call hook asks the loop policy for the current loop even in sync tests,
    which creates one when an async test left none; never closed, it is collected in some
    later test as an "unclosed event loop" ResourceWarning, which `filterwarnings = error`
    turns into that test's failure. Close it right after the sync test that made it."""
    yield
    if inspect.iscoroutinefunction(request.function):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
        if not loop.is_running():
            loop.close()
            policy.set_event_loop(None)


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
