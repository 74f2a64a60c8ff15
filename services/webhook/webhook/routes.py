"""The webhook's HTTP routes. Thin: each one checks, then calls the piece that does the work."""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import Span, SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from wacoder import probe, templates, tracing
from wacoder.crypto import StateCipher
from wacoder.delivery import record_status
from wacoder.phones import to_e164
from wacoder.redis import Store, ping
from wacoder.settings import Settings

from webhook import twiml
from webhook.admission import Admission, Gate
from webhook.handoff import Handoff
from webhook.health import check_all
from webhook.metrics import LATENCY, REFUSAL_NOTICES, REQUESTS, STATUS_CALLBACKS, status_label
from webhook.signature import SignatureChecker
from webhook.twilio_form import FormRejected, inbound_message, read_form, required

log = logging.getLogger("webhook.routes")
router = APIRouter()


@dataclass
class Deps:
    settings: Settings
    redis: Store
    cipher: StateCipher
    hash_salt: str
    signatures: SignatureChecker
    gate: Gate
    handoff: Handoff
    channels: dict[str, grpc.aio.Channel]


def _deps(request: Request) -> Deps:
    return request.app.state.deps


def _plain(status_code: int, text: str) -> Response:
    return Response(text, status_code=status_code, media_type="text/plain")


def _server_span(route: str) -> AbstractContextManager[Span]:
    """The SERVER span of one Twilio request: the root of its trace (Twilio sends no context)."""
    return tracing.span(
        f"POST {route}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": route, "url.path": route},
    )


def _answered(span: Span, response: Response, outcome: str) -> Response:
    span.set_attribute("http.response.status_code", response.status_code)
    span.set_attribute("wacoder.outcome", outcome)
    return response


@router.post("/webhook/whatsapp", summary="Twilio's incoming-message webhook")
async def whatsapp(request: Request) -> Response:
    # One trace per message starts here; the message carries it on (gRPC, the inbox entry).
    with _server_span("/webhook/whatsapp") as span:
        return await _whatsapp(request, span)


async def _whatsapp(request: Request, span: Span) -> Response:
    started = time.perf_counter()
    deps = _deps(request)
    try:
        form = await read_form(request)
        if not deps.signatures.is_valid(request, form):
            REQUESTS.labels("bad_signature").inc()
            return _answered(span, _plain(403, "forbidden"), "bad_signature")
        message = inbound_message(form)
    except FormRejected as rejected:
        REQUESTS.labels("bad_request").inc()
        return _answered(span, _plain(rejected.status, rejected.reason), "bad_request")

    # Twilio's id of the message (signed, not private): how an SRE finds this trace.
    span.set_attribute("twilio.message_sid", message.message_sid)
    phone = to_e164(message.sender)
    try:
        verdict = await deps.gate.admit(phone, message.message_sid)
        if verdict in REFUSALS:
            return _answered(span, _refusal(verdict, phone), REFUSALS[verdict][0])
        # A replay is stored again too: storing is idempotent, and it waits for a Redis replica
        # to hold the message (ADR 0007), which the first attempt (answered 503) may not have.
        if verdict in (Admission.OK, Admission.DUPLICATE):
            await deps.handoff.submit(message)
    except RedisError as error:
        # Nothing was stored: 503 tells Twilio the message was not accepted.
        REQUESTS.labels("unavailable").inc()
        log.error("redis unavailable, message refused with 503", extra={"error": repr(error)})
        tracing.fail(span, type(error).__name__)
        return _answered(span, _plain(503, "temporarily unavailable"), "unavailable")
    outcome = "accepted" if verdict is Admission.OK else "duplicate"
    REQUESTS.labels(outcome).inc()
    LATENCY.observe(time.perf_counter() - started)
    return _answered(span, twiml.empty(), outcome)


# A refusal: the outcome it is counted as, and what the user hears (once per window).
REFUSALS = {
    Admission.UNAUTHORIZED: ("unauthorized", templates.UNAUTHORIZED),
    Admission.UNAUTHORIZED_QUIET: ("unauthorized", None),
    Admission.RATE_LIMITED: ("rate_limited", templates.RATE_LIMIT),
    Admission.RATE_LIMITED_QUIET: ("rate_limited", None),
}


def _refusal(verdict: Admission, phone: str) -> Response:
    outcome, notice = REFUSALS[verdict]
    REQUESTS.labels(outcome).inc()
    log.info("refused", extra={"phone": phone, "reason": outcome, "notified": notice is not None})
    if notice is None:
        return twiml.empty()
    REFUSAL_NOTICES.labels(outcome).inc()
    return twiml.message(notice)


@router.post("/webhook/status", summary="Twilio's delivery-status callback")
async def status(request: Request) -> Response:
    # A trace of its own, linked to the send of the message it reports on.
    with _server_span("/webhook/status") as span:
        return await _status(request, span)


async def _status(request: Request, span: Span) -> Response:
    deps = _deps(request)
    try:
        form = await read_form(request)
        if not deps.signatures.is_valid(request, form):
            return _answered(span, _plain(403, "forbidden"), "bad_signature")
        # `To` (the recipient) places the delivery record in its recipient's slot.
        required(form, "MessageSid", "MessageStatus", "To")
    except FormRejected as rejected:
        return _answered(span, _plain(rejected.status, rejected.reason), "bad_request")
    label = status_label(form["MessageStatus"])
    span.set_attribute("twilio.message_sid", form["MessageSid"])
    span.set_attribute("twilio.message_status", label)
    try:
        send = await record_status(deps.redis, form, deps.hash_salt)
    except RedisError as error:
        # Twilio retries a callback that failed; nothing is lost by refusing it now.
        tracing.fail(span, type(error).__name__)
        return _answered(span, _plain(503, "temporarily unavailable"), "unavailable")
    link = tracing.link_to(send)
    if link is not None:
        span.add_link(link.context)
    STATUS_CALLBACKS.labels(label).inc()
    return _answered(span, Response(status_code=204), "recorded")


@router.get(
    "/webhook/probe/{message_sid}",
    summary="The reply to the operator's promotion probe (signed like a Twilio request): 200 with "
    "its text once the notifier has it, 404 until then",
)
async def probe_reply(request: Request, message_sid: str) -> Response:
    deps = _deps(request)
    if not deps.signatures.is_valid(request, {}):
        return _plain(403, "forbidden")
    try:
        reply = await probe.read_reply(deps.redis, deps.cipher, deps.hash_salt, message_sid)
    except RedisError:
        return _plain(503, "temporarily unavailable")
    if reply is None:
        return _plain(404, "no reply yet")
    return _plain(200, reply)


@router.get("/livez", summary="200 while the process answers (Kubernetes liveness)")
async def livez() -> Response:
    return _plain(200, "ok")


@router.get("/readyz", summary="200 while it can accept messages: Redis answers (Kubernetes readiness)")
async def readyz(request: Request) -> Response:
    # Only Redis: with the agent down the webhook stores messages in the inbox itself.
    if await ping(_deps(request).redis):
        return _plain(200, "ok")
    return _plain(503, "redis unavailable")


@router.get(
    "/health",
    summary="Detailed view: 200 while Redis and every downstream gRPC service answer, else 503 "
    "(for dashboards and people; probes use /livez and /readyz)",
)
async def health(request: Request) -> JSONResponse:
    deps = _deps(request)
    checks = await check_all(deps.redis, deps.channels)
    healthy = all(checks.values())
    body = {
        "status": "ok" if healthy else "degraded",
        "checks": {name: "ok" if ok else "unavailable" for name, ok in checks.items()},
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
