"""Delivery status of outbound WhatsApp messages, shared by the notifier (which records a
message as `queued` the moment Twilio accepts it) and the webhook's `/webhook/status` route
(which records Twilio's status callbacks).

Both writers go through one Lua script, so the rules hold whoever comes first:
- a status only moves forward (a late `sent` never overwrites `delivered` or `read`);
- a failure with error 63016 (the recipient is outside WhatsApp's 24-hour session window) is
  counted and the message is parked for its recipient, to be re-queued ahead of the next
  message the notifier is asked to send them (replies only happen after the user wrote).

The status callback path is hot, so `record_status` is one Redis round trip (EVALSHA, with
one EVAL fallback the first time a Redis has not seen the script).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from redis.exceptions import NoScriptError

from wacoder import keys
from wacoder.keys import DELIVERY_TTL_S, PARKED_TTL_S
from wacoder.phones import phone_hash
from wacoder.redis import Store

__all__ = ["APPLY_SCRIPT", "OUTSIDE_WINDOW_ERROR", "record_accepted_args", "record_status"]

OUTSIDE_WINDOW_ERROR = "63016"


# KEYS[1] delivery hash, KEYS[2] the shard's 63016 counter, KEYS[3] the recipient's parked list
# (all three in the recipient's slot).
# ARGV: ttl, (unused), parked ttl, now, status ('' = none), error code ('' = none),
#       then field/value pairs set unconditionally (metadata from the notifier, `traceparent`
#       among them when the send was traced).
# Returns {0 unchanged / 1 applied / 2 applied and parked, the send's traceparent or ''}.
_APPLY = """
local rank = {accepted=0, scheduled=0, queued=0, sending=1, sent=2,
              failed=3, undelivered=3, delivered=4, read=5}
local key = KEYS[1]
local new = ARGV[5]
local applied = 0
-- What is set goes in one HSET, and what is read comes in one HMGET: this runs for every
-- message sent and every status callback.
local cur = redis.call('HMGET', key, 'status', 'error_code', 'parked', 'traceparent')
local st, code, parked, traceparent = cur[1], cur[2], cur[3], cur[4]
local set = {}
if new ~= '' and ((not st) or (rank[new] or -1) > (rank[st] or -1)) then
  set = {'status', new, 'updated_at', ARGV[4]}
  st = new
  if ARGV[6] ~= '' then
    set[#set + 1] = 'error_code'; set[#set + 1] = ARGV[6]; code = ARGV[6]
  end
  applied = 1
end
for i = 7, #ARGV, 2 do
  set[#set + 1] = ARGV[i]; set[#set + 1] = ARGV[i + 1]
  if ARGV[i] == 'traceparent' then traceparent = ARGV[i + 1] end
end
if #set > 0 then redis.call('HSET', key, unpack(set)) end
redis.call('EXPIRE', key, tonumber(ARGV[1]))
if (st == 'failed' or st == 'undelivered') and code == '63016' and parked ~= '1' then
  local payload = redis.call('HGET', key, 'payload')
  -- A callback can beat the notifier's own record; then the payload is not there yet and
  -- the notifier's record (same script) parks it when it arrives.
  if payload then
    redis.call('RPUSH', KEYS[3], payload)
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
    redis.call('HSET', key, 'parked', '1')
    redis.call('INCR', KEYS[2])
    applied = 2
  end
end
-- The send's trace (if the notifier traced it), for the status callback's span to link to.
return {applied, traceparent or ''}
"""
_APPLY_SHA = hashlib.sha1(_APPLY.encode()).hexdigest()


def _argv(status: str, error_code: str, fields: Mapping[str, str]) -> list[str]:
    args = [str(DELIVERY_TTL_S), "", str(PARKED_TTL_S), f"{time.time():.3f}", status, error_code]
    for name, value in fields.items():
        args += [name, value]
    return args


def _keys(to_hash: str, sid: str) -> list[str]:
    return [
        keys.delivery(to_hash, sid),
        keys.outside_window_counter(keys.shard_of(to_hash)),
        keys.outbox_parked(to_hash),
    ]


async def record_status(redis: Store, form: Mapping[str, str], hash_salt: str) -> str:
    """Records one Twilio status callback (`MessageSid`, `MessageStatus`, `ErrorCode`, and `To`,
    whose hash places the record in its recipient's slot).

    Statuses only move forward; a 63016 failure parks the message for its recipient and is
    counted. Unknown or empty fields are ignored; one Redis round trip. Returns the
    `traceparent` of the send the notifier recorded for this message ("" if none, or if the
    callback came first), for the callback's span to link to.
    """
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    to = (form.get("To") or "").strip()
    if not sid or not status or not to:
        return ""
    error_code = (form.get("ErrorCode") or "").strip()
    script_keys = _keys(phone_hash(to, hash_salt), sid)
    argv = _argv(status, error_code, {})
    try:
        reply = await redis.evalsha(_APPLY_SHA, len(script_keys), *script_keys, *argv)
    except NoScriptError:
        # First use on this Redis (or after a restart/SCRIPT FLUSH): EVAL also caches it.
        reply = await redis.eval(_APPLY, len(script_keys), *script_keys, *argv)
    carried = reply[1] if isinstance(reply, list) and len(reply) > 1 else ""
    return carried.decode() if isinstance(carried, bytes) else str(carried)


def record_accepted_args(to_hash: str, sid: str, fields: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the script that records a message Twilio just accepted as `queued`.

    The notifier runs it inside its own MULTI with the outbox XACK (all in the recipient's
    slot), so that "Twilio accepted" and "recorded as sent" are one atomic round trip; `fields`
    are to_hash, idempotency_key, outbox_id and payload (the outbox entry as JSON, body still
    encrypted, for parking), and the send's traceparent when it was traced.
    """
    return _keys(to_hash, sid), _argv("queued", "", fields)


APPLY_SCRIPT = _APPLY
