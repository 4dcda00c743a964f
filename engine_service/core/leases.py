"""Leases: which engine process drives which execution, and taking over from the dead.

A `LeaseKeeper` renews this process's leases and claims executions whose lease expired
(their process died or lost touch). Two things keep an execution from being driven by
two processes at once:

- Fencing, in the store: every claim moves the execution to the next lease epoch, and
  an append is refused unless it carries the current one. A process that was paused or
  cut off, or a same-named process from before a restart, commits nothing once another
  claimed the run.
- Giving up in time, here: attempts start only while the lease has more than `margin`
  left (`HeldLeases.fresh`), and the runs of a lease that expired unrenewed are abandoned
  (their tasks cancelled, nothing committed) the moment it expires, before anyone else
  can claim them. Only renewals that succeeded count, so a process whose store calls
  fail or hang stops on its own clock. (This assumes the replicas' clocks agree to well
  within `margin`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from engine_service.core.clock import Clock
from engine_service.core.store import FIRST_EPOCH, Lease

if TYPE_CHECKING:
    from engine_service.core.engine import Engine

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

    @property
    def margin(self) -> float:
        """How long before its lease expires a run stops starting attempts: one renewal
        interval, so one missed round is survived and the next stops in time; at most half
        of what a lease has left when it is renewed on time, so a healthy process never
        waits."""
        return max(0.0, min(self.interval, (self.duration - self.interval) / 2))


@dataclass(frozen=True, slots=True)
class _Held:
    epoch: int
    expires_at: datetime


class HeldLeases:
    """The leases this process holds, as its own successful creates, claims and
    renewals left them: each execution's epoch (its runner's writes carry it) and when
    the lease expires. An execution not held here (the engine runs without leases) is
    never held back."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._renewal = asyncio.Event()
        # Seconds before expiry from which no attempt starts; set by the LeaseKeeper.
        self.margin = 0.0

    def hold(self, execution_id: str, lease: Lease | None, epoch: int = FIRST_EPOCH) -> None:
        """This process got `lease` on the execution (created it with one, or claimed it)."""
        if lease is not None:
            self._held[execution_id] = _Held(epoch, lease.expires_at)

    def renewed(self, execution_ids: Iterable[str], expires_at: datetime) -> None:
        for execution_id in execution_ids:
            held = self._held.get(execution_id)
            if held is not None:
                self._held[execution_id] = _Held(held.epoch, expires_at)
        self._renewal.set()
        self._renewal = asyncio.Event()

    def release(self, execution_id: str) -> None:
        self._held.pop(execution_id, None)

    def epoch(self, execution_id: str) -> int:
        """The epoch a runner of the execution writes with; 0 if not held."""
        held = self._held.get(execution_id)
        return held.epoch if held is not None else 0

    def epochs(self, execution_ids: Iterable[str]) -> dict[str, int]:
        """Those of `execution_ids` held here, with their epochs: what a renewal sends."""
        return {i: self._held[i].epoch for i in execution_ids if i in self._held}

    def fresh(self, execution_id: str) -> bool:
        """Whether an attempt may start now: more than `margin` of the lease is left."""
        held = self._held.get(execution_id)
        if held is None:
            return True
        left = (held.expires_at - self._clock.now()).total_seconds()
        return left > self.margin

    async def until_fresh(self, execution_id: str) -> None:
        """Wait while the lease is too close to expiry for an attempt to start: until a
        renewal succeeds, or for ever (the run is abandoned when the lease expires)."""
        while not self.fresh(execution_id):
            await self._renewal.wait()

    def expired(self) -> list[str]:
        now = self._clock.now()
        return [i for i, held in self._held.items() if held.expires_at <= now]

    def seconds_to_next_expiry(self) -> float | None:
        if not self._held:
            return None
        soonest = min(held.expires_at for held in self._held.values())
        return max(0.0, (soonest - self._clock.now()).total_seconds())


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
        self._tasks: list[asyncio.Task[None]] = []
        engine.lease_owner = settings.owner
        engine.lease_seconds = settings.duration
        engine.leases.margin = settings.margin

    async def start(self) -> int:
        """Claim what is claimable now, then keep leases in the background."""
        claimed = await self.claim(take_over=self._settings.take_over_on_start)
        await self._engine.apply_commands()
        self._tasks = [
            asyncio.create_task(self._keep(), name="lease-keeper"),
            asyncio.create_task(self._expire(), name="lease-expiry"),
        ]
        return claimed

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _lease(self) -> Lease:
        expires = self._engine.clock.now() + timedelta(seconds=self._settings.duration)
        return Lease(self._settings.owner, expires)

    async def renew(self) -> int:
        """Extend every lease held; abandon executions whose lease was lost. Returns lost."""
        await self.abandon_expired()
        driven = self._engine.driven_executions
        lease = self._lease()
        held = self._engine.leases
        kept = await self._engine.store.renew_leases(lease, held.epochs(driven))
        held.renewed(kept, lease.expires_at)
        lost = [execution_id for execution_id in driven if execution_id not in kept]
        for execution_id in lost:
            log.warning("lease of execution %s was lost; no longer driving it", execution_id)
            held.release(execution_id)
            await self._engine.abandon(execution_id)
        return len(lost)

    async def abandon_expired(self) -> int:
        """Stop driving, committing nothing, every run whose lease expired unrenewed:
        another process may claim it from now on. Returns how many were driven."""
        held = self._engine.leases
        expired = held.expired()
        driven = [i for i in expired if i in self._engine.driven_executions]
        for execution_id in expired:
            held.release(execution_id)
        for execution_id in driven:
            log.warning(
                "lease of execution %s expired unrenewed; no longer driving it", execution_id
            )
        await asyncio.gather(*(self._engine.abandon(i) for i in driven))
        return len(driven)

    async def claim(self, *, take_over: bool = False) -> int:
        await self.abandon_expired()  # our own expired runs may be claimed again below
        lease = self._lease()
        claims = await self._engine.store.claim_executions(
            lease,
            now=self._engine.clock.now(),
            limit=self._settings.claim_batch,
            take_over=take_over,
        )
        adopted = 0
        for claim in claims:
            self._engine.leases.hold(claim.state.id, lease, claim.epoch)
            adopted += await self._engine.adopt(claim.state)
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

    async def _expire(self) -> None:
        """Abandon runs the moment their lease expires, whatever the store does: a round
        of `_keep` may be stuck in a call that never returns."""
        while True:
            await self.abandon_expired()
            until = self._engine.leases.seconds_to_next_expiry()
            interval = self._settings.interval
            await asyncio.sleep(interval if until is None else min(until, interval))
