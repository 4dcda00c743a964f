"""Leases: which engine process drives which execution, and taking over from the dead.

A `LeaseKeeper` renews this process's leases and claims executions whose lease expired
(their process died or lost touch). Executions this process can no longer renew are
abandoned at once, so no execution is ever driven by two processes; the store fences
writes by lease owner as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from engine_service.core.engine import Engine
from engine_service.core.store import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    owner: str
    # How long a lease lasts without renewal: the longest a dead process's executions wait.
    duration: float = 30.0
    # How often leases are renewed and expired ones claimed; well under `duration`.
    interval: float = 5.0
    # Most executions claimed per round.
    claim_batch: int = 100
    # Claim every unfinished execution on start, whatever its lease: right for a single
    # engine process (SQLite), whose previous incarnation is known to be dead.
    take_over_on_start: bool = False


class LeaseKeeper:
    def __init__(
        self,
        engine: Engine,
        settings: LeaseSettings,
        *,
        on_claim: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._on_claim = on_claim or (lambda _count: None)
        self._task: asyncio.Task[None] | None = None
        engine.lease_owner = settings.owner
        engine.lease_seconds = settings.duration

    async def start(self) -> int:
        """Claim what is claimable now, then keep leases in the background."""
        claimed = await self.claim(take_over=self._settings.take_over_on_start)
        await self._engine.apply_commands()
        self._task = asyncio.create_task(self._keep(), name="lease-keeper")
        return claimed

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _lease(self) -> Lease:
        expires = self._engine.clock.now() + timedelta(seconds=self._settings.duration)
        return Lease(self._settings.owner, expires)

    async def renew(self) -> int:
        """Extend every lease held; abandon executions whose lease was lost. Returns lost."""
        driven = self._engine.driven_executions
        kept = await self._engine.store.renew_leases(self._lease(), driven)
        lost = [execution_id for execution_id in driven if execution_id not in kept]
        for execution_id in lost:
            log.warning("lease of execution %s was lost; no longer driving it", execution_id)
            await self._engine.abandon(execution_id)
        return len(lost)

    async def claim(self, *, take_over: bool = False) -> int:
        states = await self._engine.store.claim_executions(
            self._lease(),
            now=self._engine.clock.now(),
            limit=self._settings.claim_batch,
            take_over=take_over,
        )
        adopted = 0
        for state in states:
            adopted += await self._engine.adopt(state)
        if adopted:
            log.info("claimed %d executions", adopted)
            self._on_claim(adopted)
        return adopted

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval)
            try:
                await self.renew()
                await self._engine.resume_stopped(self._lease())
                await self.claim()
                # Commands whose notice was missed, or stored before this process claimed
                # the execution they are for.
                await self._engine.apply_commands()
            except Exception:  # the store may be briefly unreachable: try again next round
                log.exception("lease round failed")
