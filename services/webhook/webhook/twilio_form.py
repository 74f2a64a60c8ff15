"""Twilio's webhook forms, read with a size cap and checked before anything acts on them.

Twilio sends at most 10 media and a Body of at most 1,600 characters; a request beyond that is
not Twilio (or Twilio is broken), and it must cost neither a 5xx nor a stalled event loop:
- a request body over MAX_REQUEST_BYTES: 413, decided from Content-Length when there is one and
  from the bytes actually read otherwise (a chunked body has none), before any parsing;
- NumMedia that is not a whole number, or negative: 400; over 10: the first 10 are considered;
- a Body over 1,600 characters is accepted, truncated to 1,600: the user still gets an answer;
- control characters in Body and ProfileName are dropped, except newline and tab;
- a missing To or Body is an empty one, as before.
The signature is verified over the form as received; cleaning happens after that.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.requests import Request
from wacoder.v1 import agent_pb2

MAX_REQUEST_BYTES = 64 * 1024
# Twilio sends about 20 fields plus two per medium; far more is not Twilio.
MAX_FIELDS = 200
MAX_MEDIA = 10
MAX_BODY_CHARS = 1600
MAX_PROFILE_NAME_CHARS = 256
# Twilio's SIDs are 34 characters and WhatsApp addresses ~25; these end up in Redis keys.
MAX_ID_CHARS = 64

# Unicode Cc (C0, DEL, C1) minus tab and newline. Format characters (Cf) stay: emoji need ZWJ.
_CONTROL = dict.fromkeys(c for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (0x09, 0x0A))


class FormRejected(Exception):
    """The request is refused with `status` and a short plain-text `reason`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_form(request: Request, max_bytes: int = MAX_REQUEST_BYTES) -> dict[str, str]:
    """The url-encoded form of `request`, read at most `max_bytes` far. Raises FormRejected."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise FormRejected(413, "request body too large")
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in ("", "application/x-www-form-urlencoded"):
        raise FormRejected(415, "expected application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise FormRejected(413, "request body too large")
    return parse_form(bytes(body))


def parse_form(body: bytes) -> dict[str, str]:
    """Url-encoded fields; a repeated field keeps its last value (as Starlette's form did)."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8", errors="replace"),
            keep_blank_values=True,
            max_num_fields=MAX_FIELDS,
            errors="replace",
        )
    except ValueError:
        raise FormRejected(400, "too many form fields") from None
    return dict(pairs)


def clean_text(text: str, max_chars: int) -> str:
    """`text` without control characters (newline and tab stay), cut to `max_chars`."""
    return text.translate(_CONTROL)[:max_chars]


def media_count(value: str) -> int:
    """How many media to look at for a NumMedia of `value`: 0..MAX_MEDIA. Raises FormRejected."""
    value = value.strip()
    if not value:
        return 0
    if value.startswith("-") and value[1:].isdigit():
        raise FormRejected(400, "NumMedia must not be negative")
    # isascii: str.isdigit also accepts digits such as "²" that int() refuses.
    if not (value.isascii() and value.isdigit()):
        raise FormRejected(400, "NumMedia must be a whole number")
    # Compared as text first: int() of thousands of digits is itself slow.
    return MAX_MEDIA if len(value) > 3 else min(int(value), MAX_MEDIA)


def required(form: Mapping[str, str], *names: str) -> None:
    missing = [name for name in names if not form.get(name)]
    if missing:
        raise FormRejected(400, f"{' and '.join(names)} are required")
    if any(len(form[name]) > MAX_ID_CHARS for name in names):
        raise FormRejected(400, f"{' or '.join(names)} too long")


def inbound_message(form: Mapping[str, str], received_at_ms: int | None = None) -> agent_pb2.InboundMessage:
    """The message Twilio's incoming-message form describes. Raises FormRejected (400)."""
    required(form, "From", "MessageSid")
    media = []
    for i in range(media_count(form.get("NumMedia", ""))):
        if url := form.get(f"MediaUrl{i}"):
            media.append(agent_pb2.Media(url=url, content_type=form.get(f"MediaContentType{i}", "")))
    return agent_pb2.InboundMessage(
        message_sid=form["MessageSid"],
        sender=form["From"],
        recipient=form.get("To", ""),
        body=clean_text(form.get("Body", ""), MAX_BODY_CHARS),
        profile_name=clean_text(form.get("ProfileName", ""), MAX_PROFILE_NAME_CHARS),
        wa_id=form.get("WaId", ""),
        media=media,
        received_at_ms=int(time.time() * 1000) if received_at_ms is None else received_at_ms,
    )
