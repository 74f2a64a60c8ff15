"""/share <project> <number> and /unshare <project> <number>: an owner gives a whitelisted
number access to a project, or takes it back.

Who may do what is AutoCoder's to decide (share_project / unshare_project are owner-only);
here the other number is checked against the whitelist and turned into the same keyed hash
that stands for it everywhere else, before it goes anywhere. The other user is told with a
message of their own, sent after the reply (a redo resends it under the same key).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wacoder import templates
from wacoder.phones import phone_hash, to_e164

if TYPE_CHECKING:
    from agent.turn import Turn

SHARE_USAGE = "/share <project name or id> <number>, e.g. /share shop +15551234567"
UNSHARE_USAGE = "/unshare <project name or id> <number>"
# Only what /share and /unshare mean to do: the LLM never grants access on its own.
COMMAND_ONLY_TOOLS = frozenset({"share_project", "unshare_project"})

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_NUMBER_TOKEN = re.compile(r"^(?:whatsapp:)?[+\d(][\d().-]*$", re.IGNORECASE)


@dataclass
class Sharing:
    """What a turn needs to share, and what it leaves for the processor to do after it."""

    salt: str
    allowed: Callable[[str], bool]
    # (to, text): messages to the other user, sent after the reply.
    notices: list[tuple[str, str]] = field(default_factory=list)
    # (project_id, member hash, joined?): the seed's project:{id}:users and user:{user}:projects.
    changes: list[tuple[str, str, bool]] = field(default_factory=list)

    def user(self, phone: str) -> str:
        return phone_hash(phone, self.salt)


def _split(args: str) -> tuple[str, str] | None:
    """ "my shop +1 555 899 0002" -> ("my shop", "+15558990002"): the number is what ends the
    line (it may hold spaces, and starts with "+" when it does), the project what comes before."""
    words = args.split()
    starts = [
        i
        for i in range(1, len(words))
        if words[i].lower().startswith(("+", "whatsapp:", "00"))
        and all(_NUMBER_TOKEN.match(w) for w in words[i:])
    ]
    start = starts[0] if starts else len(words) - 1
    if start < 1 or not _NUMBER_TOKEN.match(words[start]):
        return None
    return " ".join(words[:start]), to_e164(" ".join(words[start:]))


async def _owned(turn: Turn, ref: str) -> tuple[dict[str, Any] | None, str | None]:
    """The project named `ref` (id, or name case-insensitively; own projects first), or the reply
    that explains why not."""
    projects = await turn.list_projects()
    found = [p for p in projects if p["project_id"] == ref] or [
        p for p in projects if p["name"].lower() == ref.lower()
    ]
    found.sort(key=lambda p: p.get("role", "owner") != "owner")
    if not found:
        return None, templates.PROJECT_NOT_FOUND
    if found[0].get("role", "owner") != "owner":
        return None, f"🔒 Only the owner of *{found[0]['name']}* can share it or stop sharing it."
    return found[0], None


async def _prepare(turn: Turn, args: str, usage: str) -> tuple[dict[str, Any], str, Sharing] | str:
    parsed = _split(args.strip())
    if parsed is None or turn.sharing is None:
        return f"Usage: {usage}"
    ref, phone = parsed
    if not _E164.match(phone):
        return (
            f"📵 “{phone[:20]}” is not a phone number. Write it in international format, e.g. +15551234567."
        )
    project, refusal = await _owned(turn, ref)
    if project is None:
        return refusal or templates.PROJECT_NOT_FOUND
    if phone == to_e164(turn.state.phone):
        return "That is your own number: you already have all your projects."
    return project, phone, turn.sharing


async def share(turn: Turn, args: str) -> str:
    prepared = await _prepare(turn, args, SHARE_USAGE)
    if isinstance(prepared, str):
        return prepared
    project, phone, sharing = prepared
    if not sharing.allowed(phone):
        return (
            f"🚫 {phone} may not use this bot, so I cannot share with them. "
            "Ask the bot's operator to add the number to the whitelist first."
        )
    result = await turn.autocoder.call(
        turn.caller, "share_project", project_id=project["project_id"], member=sharing.user(phone)
    )
    name, project_id = result["name"], result["project_id"]
    sharing.changes.append((project_id, sharing.user(phone), True))
    if result.get("changed", True):
        sharing.notices.append(
            (phone, f"👥 {to_e164(turn.state.phone)} shared project *{name}* with you; /use {project_id}")
        )
    return (
        f"👥 Shared *{name}* (`{project_id}`) with {phone}: they can /use it, /run tasks in it and "
        f"see its sessions. /unshare {name} {phone} takes it back."
    )


async def unshare(turn: Turn, args: str) -> str:
    prepared = await _prepare(turn, args, UNSHARE_USAGE)
    if isinstance(prepared, str):
        return prepared
    project, phone, sharing = prepared
    result = await turn.autocoder.call(
        turn.caller, "unshare_project", project_id=project["project_id"], member=sharing.user(phone)
    )
    name, project_id = result["name"], result["project_id"]
    sharing.changes.append((project_id, sharing.user(phone), False))
    if not result.get("changed", True):
        return f"{phone} had no access to *{name}*; nothing changed."
    sharing.notices.append(
        (phone, f"👥 {to_e164(turn.state.phone)} stopped sharing project *{name}* with you.")
    )
    return f"🔒 {phone} no longer has access to *{name}* (`{project_id}`)."
