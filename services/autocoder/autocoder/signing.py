"""Expiring, HMAC-signed download URLs.

A URL names the project and the file and carries its expiry and an HMAC-SHA256 over both, so
the download route needs no session, no caller and no lookup: anyone holding the link may
fetch that one file until it expires (WhatsApp users open it in a browser), and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote


class UrlSigner:
    def __init__(self, key: bytes, base_url: str, ttl_s: int) -> None:
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def _mac(self, project_id: str, path: str, exp: int) -> str:
        message = f"{project_id}\n{path}\n{exp}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def sign(self, project_id: str, path: str, now: float | None = None) -> tuple[str, int]:
        """(download URL, its expiry as unix seconds)."""
        exp = int(now if now is not None else time.time()) + self.ttl_s
        sig = self._mac(project_id, path, exp)
        url = f"{self.base_url}/files/{quote(project_id)}/{quote(path)}?exp={exp}&sig={sig}"
        return url, exp

    def verify(self, project_id: str, path: str, exp: str, sig: str, now: float | None = None) -> bool:
        if not exp.isdigit() or len(exp) > 12:
            return False
        if int(exp) < (now if now is not None else time.time()):
            return False
        expected = self._mac(project_id, path, int(exp))
        # Constant time, so the signature cannot be guessed byte by byte from response timing.
        return hmac.compare_digest(expected.encode(), sig.encode())
