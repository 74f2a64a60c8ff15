"""Every Redis key the platform uses, in one place (the seed's structure plus what
reliability needs). A key that is not meant to live forever gets its TTL from here too.

A key that names a user names them by `user`: the keyed hash of their number
(`wacoder.phones.phone_hash`), never the number itself.

Hash slots (Redis Cluster, docs/adr/0007-scale-out.md): a user belongs to one of `SHARDS`
shards (by their hash), and every key about them carries their shard's hash tag `{s<n>}`,
as do that shard's inbox and outbox streams. So everything one message touches (its de-
duplication mark, the user's counters and state, the stream entry) lives in one slot, and one
Lua script or MULTI can change it atomically. Keys about a project or a session that are not
a user's own (`project:{id}:users`, `session:{id}`) have slots of their own and are written
idempotently outside those atomic steps.

The shard count is fixed for the life of a keyspace: changing it re-homes every user's keys
(their conversation memory starts afresh). `configure` sets it once per process.

Queues may have a namespace (QUEUE_NAMESPACE: a blue/green release's colour): the inbox and
outbox streams, their bookkeeping, the shard leases and the progress relays are then the
namespace's own, so two colours run side by side on one Redis, each working only what its own
webhook accepted; conversation state, de-duplication and limits stay shared.
"""

from __future__ import annotations

import re

DAY_S = 24 * 60 * 60

SHARDS = 16
# "" or "<namespace>:", in the names of everything that is a namespace's own.
_QUEUES = ""


def configure(shards: int, queue_namespace: str = "") -> None:
    """Sets the shard count (STREAM_SHARDS) and the queue namespace (QUEUE_NAMESPACE) for this
    process."""
    global SHARDS, _QUEUES
    if shards < 1:
        raise ValueError("STREAM_SHARDS must be at least 1")
    if not re.fullmatch(r"[a-z0-9-]{0,32}", queue_namespace):
        raise ValueError("QUEUE_NAMESPACE: at most 32 of a-z, 0-9 and -")
    SHARDS = shards
    _QUEUES = f"{queue_namespace}:" if queue_namespace else ""


def shard_of(user: str) -> int:
    """The shard of a user hash (hex): stable, and even across shards."""
    return int(user[:8], 16) % SHARDS


def shard_tag(shard: int) -> str:
    """The hash tag of a shard: every key with it lives in the same Redis Cluster slot."""
    return f"{{s{shard}}}"


def _tag(user: str) -> str:
    return shard_tag(shard_of(user))


# The seed's keys.
CONVERSATION_TTL_S = DAY_S


def conversation(user: str) -> str:
    return f"conversation:{_tag(user)}:{user}"


# The seed's two-way index of users and projects; refreshed whenever a user touches a project.
INDEX_TTL_S = 30 * DAY_S


def user_projects(user: str) -> str:
    return f"user:{_tag(user)}:{user}:projects"


def project_users(project_id: str) -> str:
    """A set of user hashes."""
    return f"project:{project_id}:users"


def session(session_id: str) -> str:
    return f"session:{session_id}"


# The seed: sessions expire after 24 hours (refreshed when the session ends).
SESSION_TTL_S = DAY_S


def rate_limit(user: str) -> str:
    return f"rate_limit:{_tag(user)}:{user}"


def rate_limit_global(window_start: int) -> str:
    """The global counter of one fixed rate window, by its start (epoch seconds): one counter for
    everybody, in a slot of its own (not in an atomic step with a user's keys: see
    webhook/admission.py for how it stays exact); a message is counted, and counted back, in the
    window it arrived in (docs/adr/0007-scale-out.md)."""
    return f"rate_limit:global:{window_start}"


# Messages from numbers that are not whitelisted, all together: bounds the work strangers cause.
RATE_LIMIT_STRANGERS = "rate_limit:strangers"
# A refusal the user hears about is said at most once per window: the rate-limit notice once a
# rate window, the not-authorized notice once an hour (each is a paid message).
UNAUTHORIZED_NOTICE_TTL_S = 60 * 60


def refusal_notice(reason: str, user: str) -> str:
    """Set while `user` has been told about refusal `reason` (rate_limit, unauthorized)."""
    return f"notice:{reason}:{_tag(user)}:{user}"


# WhatsApp's customer-service window: we may write to a user for 24 h after their last message.
WINDOW_S = DAY_S


def last_inbound(user: str) -> str:
    """Set (24 h TTL) when a user's message is accepted: the notifier writes only to users whose
    window is open, or to whitelisted numbers."""
    return f"inbound:last:{_tag(user)}:{user}"


# Reliability: inbound de-duplication, the durable inbox and outbox, dead letters.
DEDUP_TTL_S = DAY_S


def inbound_seen(user: str, message_sid: str) -> str:
    """Set when a message of `user` is accepted: a replay of its MessageSid is a duplicate."""
    return f"inbound:seen:{_tag(user)}:{message_sid}"


# The agent's inbox and the notifier's outbox, one stream per shard. Handled inbox entries stay
# a while (a recent history for operators): the agent trims beyond INBOX_MAXLEN (settings),
# never below what it has acknowledged.
INBOX_GROUP = "agent"
OUTBOX_GROUP = "notifier"


def inbox_stream(shard: int) -> str:
    return f"stream:inbox:{_QUEUES}{shard_tag(shard)}"


def outbox_stream(shard: int) -> str:
    return f"stream:outbox:{_QUEUES}{shard_tag(shard)}"


def dead_letters(shard: int) -> str:
    return f"stream:outbox:dead:{_QUEUES}{shard_tag(shard)}"


def outbound_seen(user: str, idempotency_key: str) -> str:
    return f"outbound:seen:{_tag(user)}:{idempotency_key}"


def agent_replies(user: str, message_sid: str) -> str:
    """The replies the agent produced for one inbound message (so a retry resends, not redoes)."""
    return f"agent:replies:{_tag(user)}:{message_sid}"


PROBE_REPLY_TTL_S = 10 * 60


def probe_reply(user: str, message_sid: str) -> str:
    """The reply to a promotion probe (wacoder.probe), by the probe's MessageSid: held instead
    of being sent, until the operator has read it."""
    return f"probe:reply:{_tag(user)}:{message_sid}"


def delivery(user: str, message_sid: str) -> str:
    """Delivery status of one outbound message to `user`, by Twilio's MessageSid."""
    return f"delivery:{_tag(user)}:{message_sid}"


def session_watch(shard: int, session_id: str) -> str:
    """A live progress relay of a coding session to a user of `shard` (relayed by the replica
    that owns the shard, resumed by whoever owns it next)."""
    return f"watch:{_QUEUES}{shard_tag(shard)}:{session_id}"


def active_watches(shard: int) -> str:
    """The sessions of `shard` whose progress is being relayed."""
    return f"watch:active:{_QUEUES}{shard_tag(shard)}"


# Shard ownership (wacoder.leases): which replica of a service holds which shard, and which
# replicas are alive.
def shard_lease(service: str, shard: int) -> str:
    return f"lease:{service}:{_QUEUES}{shard_tag(shard)}"


def replicas(service: str) -> str:
    """Sorted set of a service's live replicas, scored by when their registration expires."""
    return f"replicas:{service}:{_QUEUES}"


# The notifier's outbox bookkeeping (see docs/adr/0003-notifier-outbox.md).
OUTBOUND_SEEN_TTL_S = DAY_S  # how long a Send idempotency key is remembered
# Dead letters are meant to be looked at and replayed, not to expire; a cap (XADD MAXLEN ~)
# keeps a storm of failures from filling Redis.
DEAD_LETTER_MAXLEN = 100_000
# Long enough for a peer that claimed the entry to see that Twilio already has it.
OUTBOX_SENT_TTL_S = DAY_S
# Lives as long as an entry may plausibly stay pending; deleted when the entry is finished.
OUTBOX_IN_FLIGHT_TTL_S = 7 * DAY_S


def outbox_sent(shard: int, outbox_id: str) -> str:
    """Set atomically with the XACK once Twilio accepted the entry (value: the MessageSid): a
    consumer that handles the same entry again sees it and does not send again."""
    return f"outbox:sent:{_QUEUES}{shard_tag(shard)}:{outbox_id}"


def outbox_in_flight(shard: int, outbox_id: str) -> str:
    """Hash `first_at`/`last_at` (epoch seconds) written just before each POST of the entry:
    whoever handles the entry again knows a request may have reached Twilio and asks Twilio
    before sending (reconciliation)."""
    return f"outbox:inflight:{_QUEUES}{shard_tag(shard)}:{outbox_id}"


# A delivery record is kept a week: long enough for late callbacks and for support to look up
# what happened to a message, short enough not to pile up.
DELIVERY_TTL_S = 7 * DAY_S
# Messages parked for a recipient outside WhatsApp's 24-hour window wait this long for the
# user to write again; after that the reply is stale and is dropped with its list.
PARKED_TTL_S = 7 * DAY_S


def outbox_parked(user: str) -> str:
    """The list of messages parked for one recipient (JSON outbox entries, bodies encrypted)."""
    return f"outbox:parked:{_tag(user)}:{user}"


def outside_window_counter(shard: int) -> str:
    """Messages of `shard` that failed with 63016 (outside the 24-hour window), for operators;
    a running total (sum over the shards), so it lives forever."""
    return f"metrics:notifier:outside_window_total:{shard_tag(shard)}"


# A sender's send slot is a time at most a backlog ahead; an idle one expires this long after.
SEND_RATE_TTL_S = 60


def send_rate(sender: str) -> str:
    """When a sender's next send may go (GCRA): one number's, or a Messaging Service's (its
    SID). Shared by every notifier replica and both colours: the limit is the sender's. (Not
    `send_rate:`, a hash in older releases.)"""
    return f"notifier:send_slot:{sender}"


# The mcp-bridge's caches of AutoCoder tool results.
PROJECTS_TTL_S = 5 * 60
FILES_TTL_S = 10 * 60
HEALTH_TTL_S = 60
# How long the bridge remembers that a session has ended (so its files may be cached).
SESSION_ENDED_TTL_S = DAY_S


def projects_cache(caller: str) -> str:
    """list_projects of one caller."""
    return f"bridge:cache:projects:{caller}"


def files_cache(caller: str, session_id: str) -> str:
    """get_session_files of one caller's ended session."""
    return f"bridge:cache:files:{caller}:{session_id}"


def health_cache() -> str:
    """check_system_health: the same for everybody."""
    return "bridge:cache:health"


def session_ended(caller: str, session_id: str) -> str:
    """Set once the bridge has seen the session succeed or fail: its files stop changing."""
    return f"bridge:cache:ended:{caller}:{session_id}"


# The agent's active-users gauge: HyperLogLogs of user hashes per time bucket, all in one slot so
# that a window's buckets are counted together (a HyperLogLog does not give its members back).
ACTIVE_USERS_TTL_S = 25 * 60 * 60


def active_users(bucket: int) -> str:
    return f"metrics:active_users:{{metrics}}:{bucket}"
