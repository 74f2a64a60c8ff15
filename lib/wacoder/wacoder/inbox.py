"""The agent's durable inbox: a Redis Stream of accepted WhatsApp messages.

Both the agent (SubmitMessage) and the webhook (when the agent cannot be reached) store
messages with `enqueue`, so either path is idempotent on Twilio's MessageSid: the
de-duplication mark and the stream entry are written by one Lua script, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass

from wacoder import keys, tracing
from wacoder.crypto import StateCipher
from wacoder.phones import phone_hash
from wacoder.redis import Replication, Store
from wacoder.v1 import agent_pb2

# KEYS[1] = dedup mark, KEYS[2] = the sender's inbox shard (one slot: the sender's shard tag);
# ARGV = sid, ttl, ordering key, encrypted payload, traceparent ('' = none: tracing is off).
# No MAXLEN here: a cap applied while adding would trim entries nobody has handled yet. The
# consumer trims what the group has acknowledged (wacoder.streams).
# A duplicate still writes (it refreshes the mark's TTL): replication is ordered, so waiting
# for a replica to have that write (WAIT) also confirms the original entry, which a replay
# after a 503 must not take for granted.
_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) == false then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return ''
end
if ARGV[5] == '' then
  return redis.call('XADD', KEYS[2], '*', 'sid', ARGV[1], 'key', ARGV[3], 'payload', ARGV[4])
end
return redis.call('XADD', KEYS[2], '*', 'sid', ARGV[1], 'key', ARGV[3], 'payload', ARGV[4],
                  'traceparent', ARGV[5])
"""


@dataclass(frozen=True)
class Enqueued:
    duplicate: bool
    entry_id: str


class Inbox:
    def __init__(self, redis: Store, cipher: StateCipher, hash_salt: str, replication: Replication) -> None:
        """`replication`: the write waits for a Redis replica before it counts as stored (a 200
        to Twilio depends on it, docs/adr/0007)."""
        self.redis = redis
        self.cipher = cipher
        self.hash_salt = hash_salt
        self.replication = replication
        self._enqueue = redis.register_script(_ENQUEUE)

    async def enqueue(self, message: agent_pb2.InboundMessage) -> Enqueued:
        # The message text is user data: it is stored encrypted, like conversation state.
        payload = self.cipher.encrypt(message.SerializeToString().hex())
        user = phone_hash(message.sender, self.hash_salt)
        seen = keys.inbound_seen(user, message.message_sid)
        # The trace this message belongs to travels beside it (not private): the agent that
        # handles it, now or after a restart, continues that trace (wacoder.tracing).
        carried = tracing.traceparent()

        async def write(client: Store) -> str:
            reply = await self._enqueue(
                keys=[seen, keys.inbox_stream(keys.shard_of(user))],
                # One sender's messages are handled in order: the hashed sender is the ordering key.
                args=[message.message_sid, keys.DEDUP_TTL_S, user, payload, carried],
                client=client,
            )
            return str(reply or "")

        entry_id = await self.replication.run(seen, write)
        return Enqueued(duplicate=not entry_id, entry_id=entry_id or "")

    def decode(self, fields: dict[str, str]) -> agent_pb2.InboundMessage:
        return decode_entry(self.cipher, fields)


def decode_entry(cipher: StateCipher, fields: dict[str, str]) -> agent_pb2.InboundMessage:
    """The message an inbox entry holds."""
    message = agent_pb2.InboundMessage()
    message.ParseFromString(bytes.fromhex(cipher.decrypt(fields["payload"])))
    return message
