"""Every Redis key the platform uses, in one place (the seed's structure plus what
reliability needs). A key that is not meant to live forever gets its TTL from here too."""

from __future__ import annotations

DAY_S = 24 * 60 * 60

# The seed's keys.
CONVERSATION_TTL_S = DAY_S


def conversation(phone: str) -> str:
    return f"conversation:{phone}"


def user_projects(phone: str) -> str:
    return f"user:{phone}:projects"


def project_users(project_id: str) -> str:
    return f"project:{project_id}:users"


def session(session_id: str) -> str:
    return f"session:{session_id}"


def rate_limit(phone: str) -> str:
    return f"rate_limit:{phone}"


RATE_LIMIT_GLOBAL = "rate_limit:global"

# Reliability: inbound de-duplication, the durable inbox and outbox, dead letters.
DEDUP_TTL_S = DAY_S


def inbound_seen(message_sid: str) -> str:
    return f"inbound:seen:{message_sid}"


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
