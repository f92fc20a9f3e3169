"""Whether an endpoint answers, from this process's view: one call of the standard gRPC
health service (``grpc.health.v1.Health/Check`` for the whole server), which also tells a
server that answers without offering that service (UNIMPLEMENTED) from one that does not
answer at all.

The request and reply are encoded here by hand: ``HealthCheckRequest{service: ""}`` is
empty, and the reply's one field is ``status`` (field 1, a varint), so no generated code
and no ``grpcio-health-checking`` is needed.

Example::

    >>> result = asyncio.run(probe_endpoint("grpc://" + echo.address, timeout=2.0))
    >>> result.state, result.detail
    ('up', 'answers; no health service (UNIMPLEMENTED)')
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import grpc.aio

from ..balancer.targets import endpoint_target

__all__ = ["HEALTH_CHECK", "SERVING_REPLY", "ProbeResult", "probe_endpoint", "probe_endpoints", "serving_status"]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: An encoded ``HealthCheckResponse{status: SERVING}``: what a server's health service answers
#: when all is well (the demo's servers answer it).
SERVING_REPLY = b"\x08\x01"
#: ``HealthCheckResponse.ServingStatus`` by number.
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
#: Endpoints probed at once; a mesh service may have thousands.
CONCURRENT_PROBES = 32
#: Codes that mean nothing answered.
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe of ``endpoint`` found.

    ``state`` is ``serving`` (the health service says SERVING), ``not-serving`` (it says
    anything else), ``up`` (the server answers but has no health service, or refuses the
    call), ``down`` (nothing answered within the timeout) or ``invalid`` (not a gRPC
    endpoint). ``detail`` says why in words; ``millis`` is how long the call took.
    """

    endpoint: str
    state: str
    detail: str
    millis: float

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON types."""
        return asdict(self)


def serving_status(reply: bytes) -> str:
    """The ``status`` of an encoded ``HealthCheckResponse`` (absent means 0, UNKNOWN).

    >>> serving_status(b"\\x08\\x01"), serving_status(b""), serving_status(b"\\x08\\x02")
    ('SERVING', 'UNKNOWN', 'NOT_SERVING')
    """
    value = 0
    if len(reply) >= 2 and reply[0] == 0x08:  # field 1, varint; statuses fit in one byte
        value = reply[1]
    return _SERVING_STATUS.get(value, f"status {value}")


async def probe_endpoint(endpoint: str, timeout: float) -> ProbeResult:
    """Probe one registered endpoint (``grpc://host:port`` or ``host:port``) with a health
    check that ends within ``timeout`` seconds; never raises for what the endpoint does."""
    target = endpoint_target(endpoint)
    if target is None:
        return ProbeResult(endpoint, "invalid", "not a gRPC endpoint", 0.0)
    started = time.perf_counter()
    # One channel per probe: a shared one would report the state of an earlier connection.
    async with grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(HEALTH_CHECK)
        try:
            reply = await check(b"", timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            millis = (time.perf_counter() - started) * 1000
            code = exc.code()
            if code in _NO_ANSWER:
                return ProbeResult(endpoint, "down", f"{code.name}: {exc.details() or 'no answer'}", millis)
            if code is grpc.StatusCode.UNIMPLEMENTED:
                return ProbeResult(endpoint, "up", "answers; no health service (UNIMPLEMENTED)", millis)
            return ProbeResult(endpoint, "up", f"answers {code.name}", millis)
    millis = (time.perf_counter() - started) * 1000
    status = serving_status(bytes(reply))
    state = "serving" if status == "SERVING" else "not-serving"
    return ProbeResult(endpoint, state, f"health: {status}", millis)


async def probe_endpoints(endpoints: list[str], timeout: float) -> list[ProbeResult]:
    """Probe every endpoint, :data:`CONCURRENT_PROBES` at a time, in the order given."""
    slots = asyncio.Semaphore(CONCURRENT_PROBES)

    async def one(endpoint: str) -> ProbeResult:
        async with slots:
            return await probe_endpoint(endpoint, timeout)

    return list(await asyncio.gather(*(one(endpoint) for endpoint in endpoints)))
