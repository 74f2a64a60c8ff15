"""TwiML answers to Twilio. Everything that goes into one is XML-escaped."""

from __future__ import annotations

from xml.sax.saxutils import escape

from fastapi.responses import Response

EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def empty() -> Response:
    """Accepted: the real reply comes later through the REST API."""
    return Response(EMPTY, media_type="application/xml")


def message(text: str) -> Response:
    """One immediate reply, for refusals the user should hear about."""
    body = f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{escape(text)}</Message></Response>'
    return Response(body, media_type="application/xml")
