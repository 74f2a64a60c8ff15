"""The operations HTTP port a service serves beside its real work: `/livez` (the process is
alive), `/readyz` (it can do its job now) and `/metrics` (wacoder.metrics) (docs/architecture.md: agent 9101,
mcp-bridge 9102, notifier 9103, AutoCoder 9104).

Plain asyncio streams, no framework: GET or HEAD, one request per connection, a table of
routes. It runs on the service's own event loop
and installs no signal handlers: SIGTERM stays with `wacoder.grpc.serve` (or uvicorn), and
the service stops this server once that returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger("wacoder.ops_http")

# A readiness check: True when the service can do its job now. It should be quick; one that
# hangs or raises counts as "not ready".
Check = Callable[[], Awaitable[bool]]

# Probes and scrapes send a few hundred bytes; anything bigger or slower is not one of them.
_MAX_HEAD_BYTES = 8 * 1024
_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Reply]]


class OpsServer:
    def __init__(self, host: str, port: int, ready: Check, *, check_timeout_s: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self.check_timeout_s = check_timeout_s
        from wacoder.metrics import metrics_route  # wacoder.metrics builds on this module's Reply

        self.routes: dict[str, Route] = {
            "/livez": self.livez,
            "/readyz": self.readyz,
            "/metrics": metrics_route,
        }
        self._server: asyncio.Server | None = None
        self._was_ready: bool | None = None

    async def start(self) -> OpsServer:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=_MAX_HEAD_BYTES
            )
        except OSError as error:
            # The service itself still works; its probes failing (and this line) say why, where
            # a crash would take the real work down with the side port.
            log.error(
                "ops http port unavailable: no /livez or /readyz",
                extra={"host": self.host, "port": self.port, "error": repr(error)},
            )
            return self
        log.info("ops http server listening", extra={"host": self.host, "port": self.port})
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def livez(self) -> Reply:
        # Answering at all is the proof: the event loop runs.
        return Reply(200, b"ok\n")

    async def readyz(self) -> Reply:
        try:
            async with asyncio.timeout(self.check_timeout_s):
                ready = bool(await self.ready())
        except Exception as error:
            log.debug("readiness check failed", extra={"error": repr(error)})
            ready = False
        if ready != self._was_ready:
            # Logged on change only: probes come every few seconds.
            log.info("readiness changed", extra={"ready": ready})
            self._was_ready = ready
        return Reply(200, b"ok\n") if ready else Reply(503, b"not ready\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            reply = await self._reply(method, path)
            writer.write(_encode(reply, with_body=method != "HEAD"))
            async with asyncio.timeout(_READ_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # not a probe, or it went away: nothing to answer
        except Exception:
            log.exception("ops http request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reply(self, method: str, path: str) -> Reply:
        if not method:
            return Reply(400, b"bad request\n")
        route = self.routes.get(path)
        if route is None:
            return Reply(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n")
        try:
            return await route()
        except Exception:
            log.exception("ops http route failed", extra={"path": path})
            return Reply(500, b"internal error\n")


def _request_line(head: bytes) -> tuple[str, str]:
    """("GET", "/readyz") from "GET /readyz?verbose HTTP/1.1"; ("", "") when unreadable."""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]


def _encode(reply: Reply, *, with_body: bool) -> bytes:
    reason = HTTPStatus(reply.status).phrase
    head = (
        f"HTTP/1.1 {reply.status} {reason}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (reply.body if with_body else b"")


async def start_ops_server(host: str, port: int, ready: Check) -> OpsServer:
    """Serves /livez, /readyz and /metrics on host:port until `stop()`; `ready` decides /readyz."""
    return await OpsServer(host, port, ready).start()
