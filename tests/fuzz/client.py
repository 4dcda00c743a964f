"""The fuzz client, in a process of its own: `python -m tests.fuzz.client < spec.json`.

Generating and encoding hostile requests (megabyte strings, Structs of thousands of keys)
takes CPU; in the server's process it would stall the server's event loop and blame the
server for it. The spec names the service, the target, the seed, the count and the
strings of the world; the result (counts and findings) is printed as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from stepstream.v1 import analytics_pb2, engine_pb2

from tests.fuzz.burst import BurstResult, burst
from tests.fuzz.generator import Pools, RequestGenerator
from tests.fuzz.pools import analytics_pools, engine_pools

SERVICES = {
    "engine": (engine_pb2.DESCRIPTOR.services_by_name["EngineService"], engine_pools),
    "analytics": (analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"], analytics_pools),
}


async def run(spec: dict[str, Any]) -> BurstResult:
    service, pools_of = SERVICES[spec["service"]]
    pools: Pools = pools_of(spec["strings"])
    return await burst(
        spec["target"],
        service,
        RequestGenerator(pools),
        seed=spec["seed"],
        count=spec["count"],
        concurrency=spec.get("concurrency", 8),
    )


def main() -> None:
    spec = json.loads(sys.stdin.read())
    result = asyncio.run(run(spec))
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    main()
