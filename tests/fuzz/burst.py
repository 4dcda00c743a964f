"""A burst of generated requests against a real server, with a health prober alongside.

Every request is sent as raw bytes on a real channel, whatever its kind (unary, server
stream, client stream). Request `i` of a burst is generated from `Random(f"{seed}:{i}")`,
so any request a run reports can be rebuilt from the seed and its index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fuzz.generator import RequestGenerator

REPOSITORY = Path(__file__).resolve().parents[2]
# A unary call that takes this long counts as frozen.
CALL_DEADLINE_SECONDS = 30.0
# A stream that sends nothing for this long is left open (watch streams wait for events).
STREAM_FIRST_MESSAGE_SECONDS = 0.3
HEALTH_DEADLINE_SECONDS = 1.0
HEALTH_INTERVAL_SECONDS = 0.05
FORBIDDEN = frozenset({"INTERNAL", "UNKNOWN"})
CLIENT_WRITE_RACE = "Internal error from Core"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Finding:
    index: int
    method: str
    code: str
    details: str
    request: bytes

    def __str__(self) -> str:
        shown = self.request[:120].hex()
        more = f"... ({len(self.request)} bytes)" if len(self.request) > 120 else ""
        return f"#{self.index} {self.method}: {self.code} {self.details[:300]!r} <- {shown}{more}"


@dataclass
class BurstResult:
    seed: str
    counts: Counter[str] = field(default_factory=Counter)
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    def record(self, index: int, method: str, code: str, details: str, body: bytes) -> None:
        self.counts[code] += 1
        self.by_method.setdefault(method, Counter())[code] += 1
        frozen = code == "DEADLINE_EXCEEDED"
        if code in FORBIDDEN or frozen:
            self.findings.append(Finding(index, method, code, details, body))

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "by_method": {method: dict(counts) for method, counts in self.by_method.items()},
            "findings": [{**vars(f), "request": f.request.hex()} for f in self.findings],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BurstResult:
        result = cls(data["seed"])
        for method, counts in data["by_method"].items():
            result.by_method[method] = Counter(counts)
            result.counts.update(counts)
        for found in data["findings"]:
            result.findings.append(Finding(**{**found, "request": bytes.fromhex(found["request"])}))
        return result

    def summary(self, title: str) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in self.counts.most_common())
        return f"{title}: {self.sent} requests (seed {self.seed}): {codes}"


@dataclass
class HealthProbe:
    """Asks Health/Check every 50 ms with a 1 s deadline while the burst runs."""

    channel: aio.Channel
    service: str
    answered: int = 0
    missed: list[str] = field(default_factory=list)
    slowest: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service=self.service)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await stub.Check(request, timeout=HEALTH_DEADLINE_SECONDS)
            except aio.AioRpcError as exc:
                self.missed.append(f"{exc.code().name} after {time.perf_counter() - started:.2f}s")
            else:
                if response.status != health_pb2.HealthCheckResponse.SERVING:
                    self.missed.append(f"status {response.status}")
                self.answered += 1
            self.slowest = max(self.slowest, time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEALTH_INTERVAL_SECONDS)


@contextlib.asynccontextmanager
async def probing(target: str, service: str) -> AsyncIterator[HealthProbe]:
    """A HealthProbe on its own channel, running for the duration of the block."""
    async with aio.insecure_channel(target) as channel:
        probe = HealthProbe(channel, service)
        stop = asyncio.Event()
        task = asyncio.create_task(probe.run(stop))
        try:
            yield probe
        finally:
            stop.set()
            await task


async def burst_from_another_process(spec: dict[str, Any]) -> BurstResult:
    """`tests.fuzz.client` run on `spec` in a child process, so that generating requests
    does not compete with the server for its event loop."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fuzz.client",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPOSITORY,
    )
    out, _ = await child.communicate(json.dumps(spec).encode())
    assert child.returncode == 0, f"the fuzz client failed ({child.returncode})"
    return BurstResult.from_json(json.loads(out.decode().splitlines()[-1]))


async def burst(
    target: str,
    service: ServiceDescriptor,
    generator: RequestGenerator,
    *,
    seed: str,
    count: int,
    concurrency: int = 8,
    skip: frozenset[str] = frozenset(),
) -> BurstResult:
    """Sends `count` generated requests to `service`'s methods, `concurrency` at a time."""
    methods = [m for m in service.methods if m.name not in skip]
    result = BurstResult(seed)
    indexes = iter(range(count))
    async with aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:

        async def worker() -> None:
            for index in indexes:
                rng = random.Random(f"{seed}:{index}")
                method = rng.choice(methods)
                body = generator.request(rng, method.input_type)
                extra = [
                    generator.request(rng, method.input_type) for _ in range(rng.randint(0, 2))
                ]
                code, details = await send(channel, method, [body, *extra])
                result.record(index, method.name, code, details, body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


async def send(
    channel: aio.Channel, method: MethodDescriptor, bodies: list[bytes]
) -> tuple[str, str]:
    """The status code a call ends with ("OPEN": a stream still waiting for events)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            return await _client_stream(channel, path, bodies, method.server_streaming)
        if method.server_streaming:
            return await _server_stream(channel, path, bodies[0])
        await channel.unary_unary(path, None, None)(bodies[0], timeout=CALL_DEADLINE_SECONDS)
    except aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


async def _server_stream(channel: aio.Channel, path: str, body: bytes) -> tuple[str, str]:
    call = channel.unary_stream(path, None, None)(body, timeout=CALL_DEADLINE_SECONDS)
    try:
        await asyncio.wait_for(call.read(), STREAM_FIRST_MESSAGE_SECONDS)
    except TimeoutError:
        return "OPEN", ""
    finally:
        call.cancel()
    code = await call.code()
    if code is grpc.StatusCode.CANCELLED:
        return "OK", ""  # we cancelled it after its first message
    return code.name, await call.details() or ""


async def _client_stream(
    channel: aio.Channel, path: str, bodies: list[bytes], server_streaming: bool
) -> tuple[str, str]:
    if server_streaming:
        return "SKIPPED", ""  # no such method in the contract (reflection is not fuzzed)
    call = channel.stream_unary(path, None, None)(None, timeout=CALL_DEADLINE_SECONDS)
    try:
        try:
            for body in bodies:
                await call.write(body)
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the server ended the call early; its status says why
        await call
    except aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.INTERNAL and exc.details() == CLIENT_WRITE_RACE:
            # The client's own report, not the server's: a write that lost the race with
            # the server ending the call overwrites the server's status on the client
            # (grpc/grpc#36066). The server's INTERNAL reads "internal error (trace id ...)",
            # and the server logs nothing here (the test asserts its error log is empty).
            return "CLIENT_WRITE_RACE", ""
        raise
    return "OK", ""
