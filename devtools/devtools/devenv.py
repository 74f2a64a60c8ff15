"""The embedded defaults of `make run` and `make chat`: what a newcomer gets with no
accounts. Anything set in the environment (or .env) wins over these."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet
from dotenv import dotenv_values

RUN_DIR = Path(".run")
DEV_ACCOUNT_SID = "AC" + "0" * 32
DEV_AUTH_TOKEN = "dev-auth-token"
DEV_PHONE = "+15550001234"
CHAT_TWILIO_URL = "http://127.0.0.1:8099"


def configured() -> dict[str, str]:
    """The variables the user set: .env first, the environment wins."""
    values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    values.update(os.environ)
    return values


# Secrets `make run` generates once into .run/ and keeps (state written under a key, and hashes
# keyed by a salt, survive restarts), file name and how to make one.
GENERATED_SECRETS: dict[str, tuple[str, Callable[[], str]]] = {
    "STATE_ENCRYPTION_KEY": ("state.key", lambda: Fernet.generate_key().decode()),
    "PHONE_HASH_SALT": ("phone_hash.salt", lambda: secrets.token_urlsafe(32)),
    "SERVICE_TOKEN": ("service.token", lambda: secrets.token_urlsafe(32)),
    "AUTOCODER_API_KEY": ("autocoder.key", lambda: secrets.token_urlsafe(32)),
}


def generated_secret(variable: str) -> str:
    """A development secret, generated on first use and kept in .run/ (mode 600)."""
    name, make = GENERATED_SECRETS[variable]
    path = RUN_DIR / name
    if not path.exists():
        RUN_DIR.mkdir(exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def dev_defaults(env: dict[str, str]) -> dict[str, str]:
    """The embedded defaults for whatever `env` leaves unset (Redis is decided by run.py)."""
    defaults: dict[str, str] = {"WACODER_ENV": "development"}
    defaults |= {
        variable: generated_secret(variable) for variable in GENERATED_SECRETS if variable not in env
    }
    if "TWILIO_ACCOUNT_SID" not in env:
        # No Twilio account: replies go to `make chat`, which plays Twilio's Messages API.
        defaults |= {
            "TWILIO_ACCOUNT_SID": DEV_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN,
            "TWILIO_API_BASE_URL": CHAT_TWILIO_URL,
        }
    if "ALLOWED_PHONE_NUMBERS" not in env:
        defaults["ALLOWED_PHONE_NUMBERS"] = DEV_PHONE
    return {k: v for k, v in defaults.items() if k not in env}


def chat_phone(env: dict[str, str]) -> str:
    """The number `make chat` writes as: CHAT_PHONE, else the first whitelisted one."""
    if "CHAT_PHONE" in env:
        return env["CHAT_PHONE"]
    allowed = [n.strip() for n in env.get("ALLOWED_PHONE_NUMBERS", DEV_PHONE).split(",") if n.strip()]
    return next((n for n in allowed if n != "*"), DEV_PHONE)
