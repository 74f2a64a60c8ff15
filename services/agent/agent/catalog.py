"""What the bot says about itself: the help text and the six AutoCoder agents."""

from __future__ import annotations

AGENTS: dict[str, str] = {
    "planner": "breaks your request into a plan (PLAN.md) and picks the agents",
    "developer": "writes the application code",
    "tester": "writes tests and really runs them",
    "uiux": "designs and builds the user interface",
    "database": "designs the schema and data model",
    "devops": "writes Docker, compose and deployment files",
}

HELP = """*WhatsApp-Coder* 🤖 build software by chat

*Commands*
/new <name> [: description] — create a project
/list — your projects
/use <name or id> — switch the active project
/run <task> — run a coding task in the active project
/status [session] — progress of a coding session
/files [session] — every file of a session, and a zip
/cancel [session] — stop a running session
/agents — the six AutoCoder agents
/share <project> <number> — give a whitelisted number access to your project
/unshare <project> <number> — take that access back
/clear — forget this conversation
/help — this message

Or just say what you want, e.g. _build a REST API with user authentication_."""


def agents_text() -> str:
    lines = ["*AutoCoder agents*"]
    lines += [f"- *{name}*: {what}" for name, what in AGENTS.items()]
    lines.append("\n/run picks the agents that fit your task.")
    return "\n".join(lines)
