"""Turns one inbound message into the reply: slash commands directly, free text through the
LLM agent when one is configured, else through the offline router."""

from __future__ import annotations

import logging
from typing import Protocol

from wacoder import templates

from agent import metrics, offline
from agent.autocoder import AutoCoderUnavailable, ToolError
from agent.commands import is_command, run_command
from agent.turn import Turn

log = logging.getLogger("agent.dialogue")

SOMETHING_WENT_WRONG = "⚠️ Sorry, something went wrong on our side. Please try again in a moment."


class FreeTextResponder(Protocol):
    async def respond(self, turn: Turn, text: str) -> str: ...


class OfflineResponder:
    async def respond(self, turn: Turn, text: str) -> str:
        return await offline.respond(turn, text)


async def reply_to(turn: Turn, text: str, free_text: FreeTextResponder, *, allow_empty: bool = False) -> str:
    """Never raises for the user's sake: a dead dependency becomes the connection template.
    `allow_empty`: an image without a caption still goes to the LLM (it sees the image)."""
    if not text.strip() and not allow_empty:
        return "I can only read text for now. Type /help to see what I can do."
    try:
        if is_command(text):
            return await run_command(turn, text)
        return await free_text.respond(turn, text)
    except AutoCoderUnavailable:
        metrics.ERRORS.labels("autocoder_unavailable").inc()
        log.warning("autocoder unavailable")
        return templates.CONNECTION
    except ToolError as error:
        return turn.explain(error)
    except Exception:
        metrics.ERRORS.labels("internal").inc()
        # A bug of ours must not leave the user in silence (nor retry forever).
        log.exception("unexpected error while answering")
        return SOMETHING_WENT_WRONG
