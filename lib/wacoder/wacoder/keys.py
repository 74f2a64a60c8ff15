"""Every Redis key the platform uses, in one place (the seed's structure plus what
reliability needs). A key that is not meant to live forever gets its TTL from here too.

A key that names a user names them by `user`: the keyed hash of their number
(`wacoder.phones.phone_hash`), never the number itself."""

from __future__ import annotations

DAY_S = 24 * 60 * 60

# The seed's keys.
CONVERSATION_TTL_S = DAY_S


def conversation(user: str) -> str:
    return f"conversation:{user}"


# The seed's two-way index of users and projects; refreshed whenever a user touches a project.
INDEX_TTL_S = 30 * DAY_S


def user_projects(user: str) -> str:
    return f"user:{user}:projects"


def project_users(project_id: str) -> str:
    """A set of user hashes."""
    return f"project:{project_id}:users"


def session(session_id: str) -> str:
    return f"session:{session_id}"


# The seed: sessions expire after 24 hours (refreshed when the session ends).
SESSION_TTL_S = DAY_S


def rate_limit(user: str) -> str:
    return f"rate_limit:{user}"


RATE_LIMIT_GLOBAL = "rate_limit:global"
# Messages from numbers that are not whitelisted, all together: bounds the work strangers cause.
RATE_LIMIT_STRANGERS = "rate_limit:strangers"
# A refusal the user hears about is said at most once per window: the rate-limit notice once a
# rate window, the not-authorized notice once an hour (each is a paid message).
UNAUTHORIZED_NOTICE_TTL_S = 60 * 60


def refusal_notice(reason: str, user: str) -> str:
    """Set while `user` has been told about refusal `reason` (rate_limit, unauthorized)."""
    return f"notice:{reason}:{user}"


# WhatsApp's customer-service window: we may write to a user for 24 h after their last message.
WINDOW_S = DAY_S


def last_inbound(user: str) -> str:
    """Set (24 h TTL) when a user's message is accepted: the notifier writes only to users whose
    window is open, or to whitelisted numbers."""
    return f"inbound:last:{user}"


# Reliability: inbound de-duplication, the durable inbox and outbox, dead letters.
DEDUP_TTL_S = DAY_S


def inbound_seen(message_sid: str) -> str:
    return f"inbound:seen:{message_sid}"


# Handled entries stay a while (a recent history for operators): the agent trims beyond
# INBOX_MAXLEN (settings), never below what it has acknowledged.
INBOX_STREAM = "stream:inbox"
INBOX_GROUP = "agent"
OUTBOX_STREAM = "stream:outbox"
OUTBOX_GROUP = "notifier"
DEAD_LETTER_STREAM = "stream:outbox:dead"


def outbound_seen(idempotency_key: str) -> str:
    return f"outbound:seen:{idempotency_key}"


def agent_replies(message_sid: str) -> str:
    """The replies the agent produced for one inbound message (so a retry resends, not redoes)."""
    return f"agent:replies:{message_sid}"


def delivery(message_sid: str) -> str:
    """Delivery status of one outbound message, by Twilio's MessageSid."""
    return f"delivery:{message_sid}"


def session_watch(session_id: str) -> str:
    """A live progress relay of a coding session to a user (resumed after an agent restart)."""
    return f"watch:{session_id}"


ACTIVE_WATCHES = "watch:active"


# The notifier's outbox bookkeeping (see docs/adr/0003-notifier-outbox.md).
OUTBOUND_SEEN_TTL_S = DAY_S  # how long a Send idempotency key is remembered
# Dead letters are meant to be looked at and replayed, not to expire; a cap (XADD MAXLEN ~)
# keeps a storm of failures from filling Redis.
DEAD_LETTER_MAXLEN = 100_000
# Long enough for a peer that claimed the entry to see that Twilio already has it.
OUTBOX_SENT_TTL_S = DAY_S
# Lives as long as an entry may plausibly stay pending; deleted when the entry is finished.
OUTBOX_IN_FLIGHT_TTL_S = 7 * DAY_S


def outbox_sent(outbox_id: str) -> str:
    """Set atomically with the XACK once Twilio accepted the entry (value: the MessageSid): a
    consumer that claimed the same entry meanwhile sees it and does not send again."""
    return f"outbox:sent:{outbox_id}"


def outbox_in_flight(outbox_id: str) -> str:
    """Hash `first_at`/`last_at` (epoch seconds) written just before each POST of the entry:
    whoever handles the entry again knows a request may have reached Twilio and asks Twilio
    before sending (reconciliation)."""
    return f"outbox:inflight:{outbox_id}"


# A delivery record is kept a week: long enough for late callbacks and for support to look up
# what happened to a message, short enough not to pile up.
DELIVERY_TTL_S = 7 * DAY_S
# Messages parked for a recipient outside WhatsApp's 24-hour window wait this long for the
# user to write again; after that the reply is stale and is dropped with its list.
PARKED_TTL_S = 7 * DAY_S
PARKED_PREFIX = "outbox:parked:"


def outbox_parked(to_hash: str) -> str:
    """The list of messages parked for one recipient (JSON outbox entries, bodies encrypted)."""
    return f"{PARKED_PREFIX}{to_hash}"


# Counter of messages that failed with 63016 (outside the 24-hour window), for operators; a
# running total, so it lives forever.
OUTSIDE_WINDOW_COUNTER = "metrics:notifier:outside_window_total"
# The send-rate token bucket refills within a second; an idle one expires.
SEND_RATE_TTL_S = 60


def send_rate(sender: str) -> str:
    """The token bucket of one sender number, shared by every notifier replica."""
    return f"notifier:send_rate:{sender}"


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
