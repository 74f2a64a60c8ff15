"""Twilio request signatures: HMAC-SHA1 over the public URL Twilio called plus the POST
parameters, keyed by the auth token. Verified against PUBLIC_BASE_URL, not the Host header,
because behind a proxy or tunnel the two differ and the signature covers the public one."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from twilio.request_validator import RequestValidator


class SignatureChecker:
    def __init__(self, public_base_url: str, auth_token: str) -> None:
        self.public_base_url = public_base_url.rstrip("/")
        self.validator = RequestValidator(auth_token)

    def public_url(self, request: Request) -> str:
        query = f"?{request.url.query}" if request.url.query else ""
        return f"{self.public_base_url}{request.url.path}{query}"

    def is_valid(self, request: Request, params: Mapping[str, str]) -> bool:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature:
            return False
        return bool(self.validator.validate(self.public_url(request), dict(params), signature))
