"""Expiring, HMAC-signed download URLs: the long `/files/<project>/<path>?exp=&sig=` form (still
served), and short `/f/<token>` links for one file of a session or the session's zip.

A URL names the project and the file and carries its expiry and an HMAC-SHA256 over both, so
the download route needs no session, no caller and no lookup: anyone holding the link may
fetch that one file until it expires (WhatsApp users open it in a browser), and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from urllib.parse import quote


class UrlSigner:
    def __init__(self, key: bytes, base_url: str, ttl_s: int) -> None:
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s
        # Same key, base and lifetime; defined below.
        self.short = ShortLinks(key, base_url, ttl_s)

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


# --- short links -----------------------------------------------------------------------------
# `/f/<token>`: the token itself says what (one file of a session, or the session's files as a
# zip) and until when, in a few bytes, and carries a truncated HMAC of them. A link is then some
# 60 characters instead of ~150, and a whole session's links fit one WhatsApp message.

FILE_LINK = 1
ARCHIVE_LINK = 2
_SESSION_PREFIX = "sess_"
_SESSION_HEX = 16
_MAC_BYTES = 12  # 96 bits: an online forgery is hopeless, and the token stays short
_DOMAIN = b"wacoder-short-link-v1\n"  # the key also signs the long links: never the same message
_HEAD = struct.Struct(">B8sI")  # kind, session id (8 bytes), expiry (unix seconds)
_INDEX = struct.Struct(">H")  # a file's position in the session's list of files


class LinkRefused(Exception):
    """A short link that must not be served: `status` is 403 (not ours, or altered) or 410 (expired)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ShortLink:
    kind: int
    session_id: str
    exp: int
    index: int = 0  # FILE_LINK only


class ShortLinks:
    def __init__(self, key: bytes, base_url: str, ttl_s: int) -> None:
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def _url(self, payload: bytes) -> str:
        token = base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()
        return f"{self.base_url}/f/{token}"

    def _expiry(self, now: float | None) -> int:
        return int(now if now is not None else time.time()) + self.ttl_s

    def file(self, session_id: str, index: int, now: float | None = None) -> tuple[str, int]:
        """(URL of the session's `index`-th file, its expiry as unix seconds)."""
        exp = self._expiry(now)
        payload = _HEAD.pack(FILE_LINK, _session_bytes(session_id), exp) + _INDEX.pack(index)
        return self._url(payload), exp

    def archive(self, session_id: str, now: float | None = None) -> tuple[str, int]:
        """(URL of the zip of the session's files, its expiry as unix seconds)."""
        exp = self._expiry(now)
        return self._url(_HEAD.pack(ARCHIVE_LINK, _session_bytes(session_id), exp)), exp

    def open(self, token: str, now: float | None = None) -> ShortLink:
        """What a token grants; raises LinkRefused. The signature is checked before the expiry,
        so an altered token is 403 whatever it says about time."""
        altered = LinkRefused(403, "This link is not valid.")
        if not 30 <= len(token) <= 64:
            raise altered
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, binascii.Error):
            raise altered from None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        # Re-encoding must give the same text: no second spelling of one token.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            raise altered
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise altered
        kind, session, exp = _HEAD.unpack_from(payload)
        index = 0
        if kind == FILE_LINK and len(payload) == _HEAD.size + _INDEX.size:
            (index,) = _INDEX.unpack_from(payload, _HEAD.size)
        elif not (kind == ARCHIVE_LINK and len(payload) == _HEAD.size):
            raise altered
        if exp < (now if now is not None else time.time()):
            raise LinkRefused(410, "This link has expired. Ask the bot for /files to get fresh links.")
        return ShortLink(kind, _SESSION_PREFIX + session.hex(), exp, index)


def _session_bytes(session_id: str) -> bytes:
    hex_part = session_id.removeprefix(_SESSION_PREFIX)
    if not session_id.startswith(_SESSION_PREFIX) or len(hex_part) != _SESSION_HEX:
        raise ValueError(f"not a session id: {session_id!r}")
    return bytes.fromhex(hex_part)
