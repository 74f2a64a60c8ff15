"""Phone numbers: Twilio addresses to E.164, and the hash that stands for a number in logs
and in every call to AutoCoder (which never learns the number itself)."""

from __future__ import annotations

import hashlib
import hmac

WHATSAPP_PREFIX = "whatsapp:"


def to_e164(address: str) -> str:
    """ "whatsapp:+1 (555) 123-4567" -> "+15551234567": the prefix, spaces, dashes, dots and
    brackets go, and an international "00" becomes "+". An E.164 number is returned as is."""
    address = address.strip()
    if address.lower().startswith(WHATSAPP_PREFIX):
        address = address[len(WHATSAPP_PREFIX) :]
    address = address.translate(_LAYOUT).strip()
    if address.startswith("00"):
        address = "+" + address[2:]
    return address


_LAYOUT = str.maketrans("", "", " -.()\t\u00a0")


def to_whatsapp(phone: str) -> str:
    """ "+15551234567" -> "whatsapp:+15551234567"."""
    phone = phone.strip()
    return phone if phone.startswith(WHATSAPP_PREFIX) else f"{WHATSAPP_PREFIX}{phone}"


def phone_hash(phone: str, salt: str = "wacoder") -> str:
    """A stable pseudonym for a number: the same number always gives the same 16 hex digits.

    Keyed (HMAC) so that a short, guessable number space cannot be reversed from a log line
    by someone who does not also hold the salt.
    """
    return hmac.new(salt.encode(), to_e164(phone).encode(), hashlib.sha256).hexdigest()[:16]
