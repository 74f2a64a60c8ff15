"""Rotating STATE_ENCRYPTION_KEY (issue 9, MultiFernet): state written under key A still reads
once every service runs with "B,A", and what they write from then on is under B alone.

Real processes on a Redis of the module's own: a conversation under A, a message left in the
inbox under A while the agent is down, then every service restarted with the new key list, as
a deployment rolls a new Secret."""

from __future__ import annotations

import json

import pytest
import redis
from cryptography.fernet import Fernet, InvalidToken
from devtools.stack import Stack
from wacoder import keys

from tests.harness import Conversation, RedisServer, TwilioSim, accepted, inbox_entries, user_of

ALICE = "+15557771001"
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"WACODER_ENV": "production", "STATE_ENCRYPTION_KEY": OLD_KEY}


def under(key: str, token: str) -> str:
    """`token` decrypted with `key` alone (InvalidToken if it was written under another)."""
    return Fernet(key.encode()).decrypt(token.encode()).decode()


def test_state_written_under_the_old_key_reads_after_rotation_and_new_writes_use_the_new_key(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    r = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    alice = Conversation(env, twilio_sim, ALICE)
    alice.ask("/new alpha")
    alice.ask("/new beta")
    assert "Active project: *alpha*" in alice.ask("/use alpha")
    conversation_key = keys.conversation(user_of(env, ALICE))
    assert "alpha" in under(OLD_KEY, r.get(conversation_key))

    # A message accepted while the agent is down waits in the inbox, encrypted under A.
    stack["agent"].stop()
    pending = alice.send("/list")
    assert accepted(r, env, ALICE, pending)

    # The new key first, the old one still listed: every service restarted with it.
    stack.stop()
    for process in stack.processes.values():
        process.env["STATE_ENCRYPTION_KEY"] = f"{NEW_KEY},{OLD_KEY}"
    stack.start()

    # The pending message is read (under A), and so is the conversation: alpha is still active.
    [listing] = alice.next(1, timeout_s=30)
    assert "*alpha*" in listing and "← active" in listing
    active = next(line for line in listing.splitlines() if "← active" in line)
    assert "*alpha*" in active

    # The conversation goes on, and what is written now is under B alone.
    switched = alice.send("/use beta")
    [answer] = alice.next(1, timeout_s=30)
    assert "Active project: *beta*" in answer
    state = json.loads(under(NEW_KEY, r.get(conversation_key)))
    assert state["active_project"]["name"] == "beta"
    assert ALICE in state["phone"]
    with pytest.raises(InvalidToken):
        under(OLD_KEY, r.get(conversation_key))
    [entry] = [fields for _, fields in inbox_entries(r) if fields.get("sid") == switched]
    under(NEW_KEY, entry["payload"])
    with pytest.raises(InvalidToken):
        under(OLD_KEY, entry["payload"])
