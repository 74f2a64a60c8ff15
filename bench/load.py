"""The load generator: Twilio-signed webhook POSTs over a few keep-alive HTTP/1.1 connections.

Lean on purpose: on a 2-core machine the load generator shares the cores with what it measures,
so it costs as little as it can. Requests are encoded and signed before the clock starts (the
bench measures the platform, not HMAC), sent over raw asyncio streams, and answers are read
just far enough to know their status and body. Its own CPU is reported beside the figures.

- `closed_loop`: `concurrency` connections, each sending its next request as soon as the
  previous one is answered (ack throughput and latency);
- `paced`: request i is due at start + i / rate (an open loop: a slow server does not slow
  the offered rate down, requests then queue at the connections).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

# A 503 (Redis or a replica not confirming in time) is retried as Twilio would, same MessageSid.
RETRIES = 4
RETRY_PAUSE_S = 0.2


@dataclass(frozen=True)
class Prepared:
    """One encoded, signed request and what it stands for."""

    payload: bytes
    phone: str
    message_sid: str


@dataclass
class Outcome:
    """One request's fate: when it was (last) sent, how long its accepting answer took."""

    index: int
    sent_at: float  # time.time() of the accepted attempt's start
    latency_s: float
    status: int
    body: bytes
    attempts: int = 1


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    non_200: int = 0  # answers other than 200 (retried)
    failures: list[str] = field(default_factory=list)  # requests never accepted

    @property
    def latencies_s(self) -> list[float]:
        return [o.latency_s for o in self.outcomes if o.status == 200]


def prepare(url: str, forms: Sequence[Mapping[str, str]], auth_token: str) -> list[Prepared]:
    """Encodes and signs each form as Twilio would POST it to `url`."""
    parts = urlsplit(url)
    validator = RequestValidator(auth_token)
    prepared = []
    for form in forms:
        body = urlencode(form).encode()
        signature = validator.compute_signature(url, dict(form))
        head = (
            f"POST {parts.path} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\n"
            "User-Agent: TwilioProxy/1.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        prepared.append(Prepared(head + body, form["From"].removeprefix("whatsapp:"), form["MessageSid"]))
    return prepared


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
        for attempt in itertools.count():
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            try:
                self.writer.write(payload)
                async with asyncio.timeout(timeout_s):
                    return await self._answer(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection the server closed meanwhile: once more on a new one.
                await self.close()
                if attempt >= 1:
                    raise
        raise AssertionError("unreachable")

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        else:
            body = await reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None


async def _send(connection: Connection, index: int, request: Prepared, result: LoadResult) -> None:
    for attempt in range(1, RETRIES + 2):
        sent_at, began = time.time(), time.perf_counter()
        try:
            status, body = await connection.request(request.payload)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            status, body = 0, repr(exc).encode()
        latency = time.perf_counter() - began
        if status == 200:
            result.outcomes.append(Outcome(index, sent_at, latency, status, body, attempt))
            return
        result.non_200 += 1
        if attempt <= RETRIES:
            await asyncio.sleep(RETRY_PAUSE_S * attempt)
    result.failures.append(f"{request.message_sid}: {status} {body[:200]!r}")


async def closed_loop(url: str, requests: Sequence[Prepared], concurrency: int) -> LoadResult:
    """Every request, `concurrency` at a time, each connection as fast as it is answered."""
    parts = urlsplit(url)
    result = LoadResult()
    upcoming = iter(enumerate(requests))

    async def worker() -> None:
        connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            for index, request in upcoming:
                await _send(connection, index, request, result)
        finally:
            await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(requests))))))
    result.wall_s = time.perf_counter() - began
    return result


async def paced(url: str, requests: Sequence[Prepared], rate_per_s: float, concurrency: int) -> LoadResult:
    """Request i is sent at start + i / rate_per_s (or as soon as a connection is free after)."""
    parts = urlsplit(url)
    result = LoadResult()
    upcoming = iter(enumerate(requests))
    start = time.perf_counter() + 0.05

    async def worker() -> None:
        connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            for index, request in upcoming:
                delay = start + index / rate_per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await _send(connection, index, request, result)
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(requests))))))
    result.wall_s = time.perf_counter() - start
    return result


def sequential(url: str, requests: Sequence[Prepared]) -> LoadResult:
    """One request at a time (callers that wait for something between requests use `Single`)."""
    return asyncio.run(closed_loop(url, requests, 1))


class Single:
    """One connection for sequential requests from synchronous code, on a private event loop."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.loop = asyncio.new_event_loop()
        self.connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)

    def send(self, request: Prepared) -> Outcome:
        result = LoadResult()
        self.loop.run_until_complete(_send(self.connection, 0, request, result))
        if result.failures:
            raise RuntimeError(f"not accepted: {result.failures[0]}")
        return result.outcomes[0]

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        self.loop.close()
