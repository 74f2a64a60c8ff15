"""The durable outbox: a Redis Stream of messages to send, one entry per <= 1,600-character
part, bodies encrypted at rest.

Everything that changes the outbox together with something else happens in one atomic step
(a Lua script or MULTI), so a crash between two writes cannot lose or duplicate a message:
- enqueue: idempotency marker + re-queue of the recipient's parked messages + XADD of parts;
- accepted: delivery record (`queued`) + sent marker + XACK/XDEL (+ in-flight marker gone);
- dead letter: XADD to the dead-letter stream + XACK/XDEL;
- park (63016): RPUSH to the recipient's parked list + counter + XACK/XDEL.
Acknowledged entries are deleted, so the stream holds only what is still to be sent.
Each recipient's entries go to their shard's stream, and every key these steps touch carries
that shard's hash tag: one slot, so each step is atomic on a Redis Cluster too.

Before every POST to Twilio the entry gets an in-flight marker (`keys.outbox_in_flight`): when
the entry is handled again (after a crash, by a peer, or after an attempt whose answer we never
got) the marker says a request may already have reached Twilio, and the worker asks Twilio
before sending again. Every finishing write deletes the marker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from wacoder import delivery, keys, probe, tracing
from wacoder.crypto import StateCipher
from wacoder.phones import phone_hash, to_whatsapp
from wacoder.redis import Pipe, Store
from wacoder.settings import Settings

log = logging.getLogger("notifier.outbox")

MAX_BODY = 1600


# KEYS[1] outbound_seen, KEYS[2] the recipient's outbox shard, KEYS[3] the recipient's parked
# list, KEYS[4] the recipient's last-inbound mark (one slot: the recipient's shard tag).
# ARGV[1] ttl, ARGV[2] number of parts, ARGV[3] fields per part, ARGV[4] "1" if the recipient
# is whitelisted, then the parts' field/value pairs.
# Returns {0 queued / 1 duplicate / 2 refused, comma-separated outbox ids}.
_ENQUEUE = """
local existing = redis.call('GET', KEYS[1])
if existing then return {1, existing} end
-- We write only to whitelisted numbers and to numbers that wrote to us within 24 hours.
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[4]) == 0 then return {2, ''} end
-- Messages parked while the user was outside the 24-hour window go first: a new send to
-- them means they wrote again, so the window is open.
local parked = redis.call('LRANGE', KEYS[3], 0, -1)
for _, raw in ipairs(parked) do
  local fields = cjson.decode(raw)
  local args = {}
  for k, v in pairs(fields) do args[#args + 1] = k; args[#args + 1] = tostring(v) end
  redis.call('XADD', KEYS[2], '*', unpack(args))
end
redis.call('DEL', KEYS[3])
local ids = {}
local n = tonumber(ARGV[2])
local width = tonumber(ARGV[3]) * 2
local at = 5
for i = 1, n do
  local args = {}
  for j = 0, width - 1 do args[#args + 1] = ARGV[at + j] end
  at = at + width
  ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', unpack(args))
end
local joined = table.concat(ids, ',')
redis.call('SET', KEYS[1], joined, 'EX', tonumber(ARGV[1]))
return {0, joined}
"""

# `accepted_at`: for a reply, when the webhook accepted the message it answers (epoch ms, "" for
# anything else); `traceparent`: the trace the send continues ("" when tracing is off). Both go
# with the entry wherever it goes (parked, re-queued, dead-lettered); neither is private.
_FIELDS = ("v", "to", "to_hash", "body", "media", "key", "part", "queued_at", "accepted_at", "traceparent")


@dataclass(frozen=True)
class OutboxEntry:
    """One stream entry as stored: `to`, `body` and `media` are ciphertext."""

    id: str
    fields: dict[str, str]

    @property
    def to_hash(self) -> str:
        return self.fields.get("to_hash", "")

    @property
    def shard(self) -> int:
        return keys.shard_of(self.to_hash)

    @property
    def idempotency_key(self) -> str:
        return self.fields.get("key", "")

    @property
    def last_part(self) -> bool:
        """The entry is its message's last part (or its only one)."""
        index, _, count = self.fields.get("part", "1/1").partition("/")
        return index == count

    @property
    def accepted_at_ms(self) -> int | None:
        """When the webhook accepted the message this entry replies to; None for anything else."""
        value = self.fields.get("accepted_at", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    def payload(self) -> str:
        """The entry as JSON (still encrypted), for the delivery record, parking, dead letters."""
        return json.dumps({k: v for k, v in self.fields.items() if k in _FIELDS}, separators=(",", ":"))


@dataclass(frozen=True)
class Message:
    to: str
    body: str
    media_urls: list[str]


@dataclass(frozen=True)
class PriorState:
    """What Redis knows about earlier attempts at an entry, read before the next one."""

    sent: bool  # Twilio accepted it (recorded by whoever sent it)
    first_at: float | None = None  # epoch s of the first POST ever started, None if none was
    last_at: float | None = None  # epoch s of the latest POST started

    @property
    def attempted(self) -> bool:
        return self.first_at is not None


@dataclass(frozen=True)
class EnqueueResult:
    duplicate: bool
    outbox_ids: list[str]
    refused: bool = False  # not whitelisted and silent for 24 hours: nothing was queued


def split_body(body: str) -> list[str]:
    """Parts of at most 1,600 characters as Twilio counts them (UTF-16 units), numbered
    "(1/3)", code fences balanced; a short body is one part, unchanged."""
    try:
        from wacoder.whatsapp_text import split_message
    except ImportError:  # pragma: no cover - only while the shared splitter is not installed
        log.warning("wacoder.whatsapp_text is missing; splitting without numbering")
        return [body[i : i + MAX_BODY] for i in range(0, len(body), MAX_BODY)] or [body]
    return split_message(body, MAX_BODY)


class Outbox:
    def __init__(self, redis: Store, cipher: StateCipher, settings: Settings) -> None:
        self.redis = redis
        self.cipher = cipher
        self.salt = settings.secret("phone_hash_salt")
        self._enqueue = redis.register_script(_ENQUEUE)

    def recipient_hash(self, to: str) -> str:
        return phone_hash(to, self.salt)

    async def enqueue(
        self,
        to: str,
        body: str,
        idempotency_key: str,
        media_urls: Sequence[str] = (),
        *,
        whitelisted: bool,
        accepted_at_ms: int = 0,
    ) -> EnqueueResult:
        """Stores the message (split into parts) atomically; a repeat key is a duplicate; a
        recipient that is not `whitelisted` and has not written within 24 hours is refused.

        Media go with the first part, so a picture and its caption arrive together. Every part
        carries the current trace context and `accepted_at_ms` (a reply's inbound message).
        """
        address = to_whatsapp(to)
        to_hash = self.recipient_hash(address)
        parts = split_body(body) if body else [""]
        now = f"{time.time():.3f}"
        enc_to = self.cipher.encrypt(address)
        carried = tracing.traceparent()
        accepted_at = str(accepted_at_ms) if accepted_at_ms > 0 else ""
        argv: list[str] = [
            str(keys.OUTBOUND_SEEN_TTL_S),
            str(len(parts)),
            str(len(_FIELDS)),
            "1" if whitelisted else "0",
        ]
        for index, part in enumerate(parts):
            media = json.dumps(list(media_urls)) if media_urls and index == 0 else ""
            values = {
                "v": "1",
                "to": enc_to,
                "to_hash": to_hash,
                "body": self.cipher.encrypt(part),
                "media": self.cipher.encrypt(media) if media else "",
                "key": idempotency_key,
                "part": f"{index + 1}/{len(parts)}",
                "queued_at": now,
                "accepted_at": accepted_at,
                "traceparent": carried,
            }
            for name in _FIELDS:
                argv += [name, values[name]]
        script_keys = [
            keys.outbound_seen(to_hash, idempotency_key),
            keys.outbox_stream(keys.shard_of(to_hash)),
            keys.outbox_parked(to_hash),
            keys.last_inbound(to_hash),
        ]
        verdict, joined = await self._enqueue(keys=script_keys, args=argv)
        ids = [i for i in str(joined).split(",") if i]
        return EnqueueResult(int(verdict) == 1, ids, refused=int(verdict) == 2)

    def decrypt(self, entry: OutboxEntry) -> Message:
        """Raises crypto.InvalidToken when the entry was written under another key."""
        f = entry.fields
        media = self.cipher.decrypt(f["media"]) if f.get("media") else ""
        body = self.cipher.decrypt(f["body"]) if f.get("body") else ""
        urls = json.loads(media) if media else []
        return Message(to=self.cipher.decrypt(f["to"]), body=body, media_urls=urls)

    async def prior_state(self, entry: OutboxEntry) -> PriorState:
        """Sent marker and in-flight marker, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.outbox_sent(entry.shard, entry.id))
            pipe.hgetall(keys.outbox_in_flight(entry.shard, entry.id))
            sent, marker = await pipe.execute()

        def when(name: str) -> float | None:
            value = marker.get(name) if marker else None
            return float(value) if value else None

        return PriorState(bool(sent), when("first_at"), when("last_at"))

    async def mark_in_flight(self, entry: OutboxEntry) -> None:
        """Written just before a POST: a request may reach Twilio from here on. `first_at` keeps
        the earliest attempt (the lower bound of a reconciliation search), `last_at` the latest
        (when a request still on its way may have landed)."""
        marker = keys.outbox_in_flight(entry.shard, entry.id)
        now = f"{time.time():.3f}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(marker, "first_at", now)
            pipe.hset(marker, "last_at", now)
            pipe.expire(marker, keys.OUTBOX_IN_FLIGHT_TTL_S)
            await pipe.execute()

    async def sid_belongs_to_another(self, sid: str, entry: OutboxEntry) -> bool:
        """True when `sid` is already recorded as the delivery of a different outbox entry (an
        identical text sent to the same user), so it cannot be the proof that this one went."""
        owner = await self.redis.hget(keys.delivery(entry.to_hash, sid), "outbox_id")
        return bool(owner) and owner != entry.id

    async def mark_accepted(self, entry: OutboxEntry, sid: str) -> None:
        """Twilio accepted the entry: record it and acknowledge it in one atomic round trip.
        The record keeps the send's trace context, for the status callbacks to link to."""
        fields = {
            "to_hash": entry.to_hash,
            "idempotency_key": entry.idempotency_key,
            "outbox_id": entry.id,
            "payload": entry.payload(),
        }
        carried = tracing.traceparent()
        if carried:
            fields[tracing.TRACEPARENT] = carried
        script_keys, argv = delivery.record_accepted_args(entry.to_hash, sid, fields)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.eval(delivery.APPLY_SCRIPT, len(script_keys), *script_keys, *argv)
            pipe.set(keys.outbox_sent(entry.shard, entry.id), sid, ex=keys.OUTBOX_SENT_TTL_S)
            self._finish(pipe, entry)
            await pipe.execute()

    async def hold_probe_reply(self, entry: OutboxEntry, message: Message) -> None:
        """The operator's promotion probe (wacoder.probe) is answered into Redis, not through
        Twilio: the part is kept for the operator to read, and the entry ends as sent, in one
        transaction (the probe's keys share its shard's slot)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            probe.hold(
                pipe,
                self.cipher,
                self.salt,
                entry.idempotency_key,
                entry.fields.get("part", "1/1"),
                message.body,
            )
            pipe.set(keys.outbox_sent(entry.shard, entry.id), "probe", ex=keys.OUTBOX_SENT_TTL_S)
            self._finish(pipe, entry)
            await pipe.execute()

    async def dead_letter(self, entry: OutboxEntry, reason: dict[str, str]) -> None:
        """Gives up on the entry: keeps it (encrypted, phone hashed) with why, for a replay."""
        record = {
            **reason,
            "outbox_id": entry.id,
            "to_hash": entry.to_hash,
            "idempotency_key": entry.idempotency_key,
            "payload": entry.payload(),
            "failed_at": f"{time.time():.3f}",
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                keys.dead_letters(entry.shard),
                record,  # type: ignore[arg-type]
                maxlen=keys.DEAD_LETTER_MAXLEN,
                approximate=True,
            )
            self._finish(pipe, entry)
            await pipe.execute()

    async def park(self, entry: OutboxEntry) -> None:
        """63016 at send time: keep it for when the user writes again, count it."""
        parked = keys.outbox_parked(entry.to_hash)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(parked, entry.payload())
            pipe.expire(parked, keys.PARKED_TTL_S)
            pipe.incr(keys.outside_window_counter(entry.shard))
            self._finish(pipe, entry)
            await pipe.execute()

    async def ack(self, entry: OutboxEntry) -> None:
        """Drops an entry another consumer already got accepted (see `keys.outbox_sent`)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._finish(pipe, entry)
            await pipe.execute()

    @staticmethod
    def _finish(pipe: Pipe, entry: OutboxEntry) -> None:
        """The end of every entry, in the same transaction as its record: marker gone, entry
        acknowledged and deleted."""
        stream = keys.outbox_stream(entry.shard)
        pipe.delete(keys.outbox_in_flight(entry.shard, entry.id))
        pipe.xack(stream, keys.OUTBOX_GROUP, entry.id)
        pipe.xdel(stream, entry.id)
