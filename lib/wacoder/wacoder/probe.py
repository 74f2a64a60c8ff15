"""The promotion probe: one synthetic message through the whole pipe that texts nobody.

Before the operator switches traffic to a new colour it sends that colour's webhook a message
signed as Twilio signs one, from `PROBE_SENDER`, a number that cannot belong to anybody (area
code 000 does not exist in the North American plan). The webhook admits it like a whitelisted
sender (only a request signed with the bot's auth token can claim it, and whoever holds that
token can already sign any message), the agent answers it as it answers anyone, and the
notifier, instead of calling Twilio, keeps the reply here for a few minutes. The operator reads
it back with a signed `GET /webhook/probe/{MessageSid}` and checks it. So the check proves
webhook → agent → notifier of that colour, and nobody is texted.
"""

from __future__ import annotations

from wacoder import keys
from wacoder.crypto import StateCipher
from wacoder.phones import phone_hash, to_e164
from wacoder.redis import Pipe, Store
from wacoder.whatsapp_text import join_parts

# Kept equal to the operator's copy (wacoder_operator.checks.PROBE_SENDER; a test compares them).
PROBE_SENDER = "+10000000000"
REPLY_PREFIX = "reply:"  # the agent's idempotency key of the reply to a message: reply:{sid}


def is_probe(address: str) -> bool:
    return to_e164(address) == PROBE_SENDER


def hold(pipe: Pipe, cipher: StateCipher, hash_salt: str, key: str, part: str, body: str) -> None:
    """Adds to `pipe` the writes that keep one part (`i/n`) of the reply whose idempotency key
    is `key` (idempotent: a redo writes the same again). Anything but a reply is not kept."""
    if not key.startswith(REPLY_PREFIX):
        return
    record = keys.probe_reply(phone_hash(PROBE_SENDER, hash_salt), key[len(REPLY_PREFIX) :])
    pipe.hset(record, part, cipher.encrypt(body))
    pipe.expire(record, keys.PROBE_REPLY_TTL_S)


async def read_reply(redis: Store, cipher: StateCipher, hash_salt: str, message_sid: str) -> str | None:
    """The whole reply to the probe `message_sid`, or None while any part is missing."""
    parts = await redis.hgetall(keys.probe_reply(phone_hash(PROBE_SENDER, hash_salt), message_sid))
    if not parts:
        return None
    by_index: dict[int, str] = {}
    count = 0
    for label, token in parts.items():
        index, _, total = str(label).partition("/")
        by_index[int(index)] = cipher.decrypt(str(token))
        count = int(total)
    if sorted(by_index) != list(range(1, count + 1)):
        return None
    # The parts as the notifier split them (numbered, fences balanced): the reply as written.
    return join_parts([by_index[i] for i in range(1, count + 1)])
