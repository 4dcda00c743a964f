"""Engine processes for end-to-end tests: `python -m engine_service` on free ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.integration.engine.helpers import WAIT_SECONDS, bounded

GRACE_SECONDS = 4.0
LISTENING = re.compile(r"engine listening on 127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class EngineProcess:
    process: asyncio.subprocess.Process
    port: int
    metrics_port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and how long it took."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await bounded(self.process.wait(), GRACE_SECONDS + 15)
        return code, time.monotonic() - began

    async def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as on a node failure."""
        self.process.kill()
        await bounded(self.process.wait(), 15)

    async def ensure_stopped(self) -> None:
        if self.process.returncode is None:
            await self.kill()


async def launch(
    database_url: str,
    log: Path,
    settings: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    start_within: float = WAIT_SECONDS,
) -> EngineProcess:
    """Starts an engine on `database_url`.

    `settings` are STEPSTREAM_ENGINE_* overrides by field name; `env` other variables;
    `start_within` bounds the wait for it to listen.
    """
    metrics_port = free_port()
    environment = {
        **os.environ,
        **(env or {}),
        "STEPSTREAM_ENGINE_ADDRESS": "127.0.0.1:0",
        "STEPSTREAM_ENGINE_METRICS_PORT": str(metrics_port),
        "STEPSTREAM_ENGINE_DATABASE_URL": database_url,
        "STEPSTREAM_ENGINE_GRACE_PERIOD_SECONDS": str(GRACE_SECONDS),
        **{f"STEPSTREAM_ENGINE_{k.upper()}": v for k, v in (settings or {}).items()},
    }
    since = _size(log)
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine_service", env=environment, stdout=sink, stderr=sink
        )
    port = await bounded(_listening_port(log, process, since), start_within)
    return EngineProcess(process, port, metrics_port, log)


async def _listening_port(log: Path, process: asyncio.subprocess.Process, since: int) -> int:
    while True:
        text = _tail(log, since)
        found = LISTENING.search(text)
        if found:
            return int(found.group(1))
        if process.returncode is not None:
            raise AssertionError(f"the engine exited {process.returncode}:\n{text}")
        await asyncio.sleep(0.05)


def _size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def _tail(log: Path, since: int) -> str:
    return log.read_bytes()[since:].decode(errors="replace")
