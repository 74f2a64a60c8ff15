"""The one ASGI app: MCP at /mcp, plus /health and the signed /files downloads.

The bearer token guards /mcp only: /health is for probes, and a download URL carries its own
signature (it is opened from a WhatsApp message, where no header can be added).
"""

from __future__ import annotations

import hmac
import json
import mimetypes
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from mcp.server.fastmcp import FastMCP
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from wacoder import tracing

from autocoder.signing import UrlSigner
from autocoder.storage import Store

# Served as text (never rendered as a page on our origin): generated HTML must not run here.
_TEXT_TYPES = ("text/html", "application/javascript", "text/javascript", "image/svg+xml")


class BearerAuth:
    """Pure ASGI (not BaseHTTPMiddleware) so MCP's streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, token: str | None, protected_prefix: str = "/mcp") -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.prefix = protected_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            self.expected is None
            or scope["type"] != "http"
            or not (path == self.prefix or path.startswith(self.prefix + "/"))
        ):
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(supplied, self.expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized", "detail": "missing or invalid bearer token"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="autocoder"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class TraceRequests:
    """A SERVER span per MCP request (POST /mcp), continuing the caller's `traceparent` header
    (mcp-bridge sends the tool call's). Pure ASGI, like BearerAuth, and outside it, so a refused
    request is traced too. Without tracing configured (wacoder.tracing) it is not installed.
    The GET stream and DELETE of an MCP session are not traced: they are not work."""

    def __init__(self, app: ASGIApp, path: str = "/mcp") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        carried = headers.get(tracing.TRACEPARENT.encode(), b"").decode("latin-1")
        attributes = {"http.request.method": "POST", "http.route": self.path, "url.path": self.path}
        with tracing.span(
            f"POST {self.path}", kind=SpanKind.SERVER, parent=carried, attributes=attributes
        ) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        tracing.fail(span, str(status))
                await send(message)

            await self.app(scope, receive, send_traced)


def build_app(
    mcp: FastMCP,
    store: Store,
    signer: UrlSigner,
    health: Callable[[], dict[str, Any]],
    api_key: str | None,
    on_shutdown: Callable[[], Any],
) -> ASGIApp:
    mcp_app = mcp.streamable_http_app()  # creates mcp.session_manager; its routes serve /mcp

    async def health_route(_: Request) -> JSONResponse:
        return JSONResponse(health())

    async def download(request: Request) -> Response:
        project_id = request.path_params["project_id"]
        path = request.path_params["path"]
        exp = request.query_params.get("exp", "")
        sig = request.query_params.get("sig", "")
        target = store.resolve(project_id, path)
        # One answer for a bad signature, an expired link and a path that leaves the project.
        if target is None or not signer.verify(project_id, path, exp, sig):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        if not target.is_file():
            return JSONResponse({"error": "not found"}, status_code=404)
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if media_type in _TEXT_TYPES or media_type.startswith("text/"):
            media_type = "text/plain; charset=utf-8"
        return FileResponse(
            target,
            media_type=media_type,
            headers={
                "Content-Disposition": f'inline; filename="{target.name}"',
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            },
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp.session_manager.run():
            try:
                yield
            finally:
                await on_shutdown()

    routes = [
        Route("/health", health_route, methods=["GET"]),
        Route("/files/{project_id}/{path:path}", download, methods=["GET"]),
        *mcp_app.routes,
    ]
    lifespan_cm: Callable[[Starlette], AbstractAsyncContextManager[None]] = lifespan
    app = Starlette(routes=routes, lifespan=lifespan_cm)
    guarded = BearerAuth(app, api_key)
    return TraceRequests(guarded) if tracing.enabled() else guarded
