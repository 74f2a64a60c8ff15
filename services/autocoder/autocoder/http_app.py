"""The one ASGI app: MCP at /mcp, plus /health and the signed downloads (/files/... and the
short /f/<token> links, a session's zip among them).

The bearer token guards /mcp only: /health is for probes, and a download URL carries its own
signature (it is opened from a WhatsApp message, where no header can be added).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from mcp.server.fastmcp import FastMCP
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from wacoder import tracing

from autocoder.archive import zip_stream
from autocoder.signing import ARCHIVE_LINK, LinkRefused, UrlSigner
from autocoder.storage import Session, Store

# Served as text (never rendered as a page on our origin): generated HTML must not run here.
_TEXT_TYPES = ("text/html", "application/javascript", "text/javascript", "image/svg+xml")
_PRIVATE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"}


def _file_response(target: Path | None) -> Response:
    if target is None or not target.is_file():
        return PlainTextResponse("File not found.", status_code=404, headers=_PRIVATE)
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if media_type in _TEXT_TYPES or media_type.startswith("text/"):
        media_type = "text/plain; charset=utf-8"
    return FileResponse(
        target,
        media_type=media_type,
        headers={**_PRIVATE, "Content-Disposition": f'inline; filename="{_safe_name(target.name)}"'},
    )


def session_files(store: Store, project_id: str, paths: list[str]) -> list[tuple[str, Path]]:
    """(path, file on disk) of a session's files that exist: what get_session_files lists. In a thread."""
    found = []
    for path in paths:
        target = store.resolve(project_id, path)
        if target is not None and target.is_file():
            found.append((path, target))
    return found


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "file"


def _archive_name(store: Store, session: Session) -> str:
    project = store.projects.get(session.project_id)
    prefix = _safe_name(project.name)[:40] if project else session.project_id
    return f"{prefix}-{session.session_id.removeprefix('sess_')[:8]}.zip"


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
        return _file_response(target)

    async def short_link(request: Request) -> Response:
        """`/f/<token>`: one file of a session, or all of them as a zip (signing.ShortLinks)."""
        try:
            link = signer.short.open(request.path_params["token"])
        except LinkRefused as refused:
            return PlainTextResponse(refused.reason, status_code=refused.status, headers=_PRIVATE)
        session = store.sessions.get(link.session_id)
        if session is None:  # signed by us, for a session this server no longer has
            return PlainTextResponse("This session's files are gone.", status_code=404, headers=_PRIVATE)
        if link.kind == ARCHIVE_LINK:
            files = await asyncio.to_thread(session_files, store, session.project_id, list(session.files))
            return StreamingResponse(
                zip_stream(files),
                media_type="application/zip",
                headers={
                    **_PRIVATE,
                    "Content-Disposition": f'attachment; filename="{_archive_name(store, session)}"',
                },
            )
        path = session.files[link.index] if link.index < len(session.files) else None
        target = store.resolve(session.project_id, path) if path else None
        return _file_response(target)

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
        Route("/f/{token}", short_link, methods=["GET"]),
        *mcp_app.routes,
    ]
    lifespan_cm: Callable[[Starlette], AbstractAsyncContextManager[None]] = lifespan
    app = Starlette(routes=routes, lifespan=lifespan_cm)
    guarded = BearerAuth(app, api_key)
    return TraceRequests(guarded) if tracing.enabled() else guarded
