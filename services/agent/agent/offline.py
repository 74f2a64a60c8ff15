"""Free text without an LLM: the offline router's intent, carried out with the same actions
as the slash commands."""

from __future__ import annotations

from agent import catalog
from agent.commands import run_command
from agent.router import AGENT_NAMES, Intent, IntentKind, route
from agent.turn import Turn

GREETING = (
    "👋 Hi! I turn your requests into working code with AutoCoder's agents. "
    "Start with /new <name>, or just tell me what to build. /help lists everything."
)


def team(hints: tuple[str, ...]) -> list[str] | None:
    """The agents for a task the router hinted at. A hint adds an expert to the team rather
    than replacing it: the planner always plans, and code is always tested. No hint: None,
    and AutoCoder picks the team from the task itself."""
    if not hints:
        return None
    chosen = {"planner", *hints}
    if "developer" in chosen:
        chosen.add("tester")
    return [name for name in AGENT_NAMES if name in chosen]


async def respond(turn: Turn, text: str) -> str:
    intent = route(text)
    return await _carry_out(turn, intent, text)


async def _carry_out(turn: Turn, intent: Intent, text: str) -> str:
    match intent.kind:
        case IntentKind.CREATE_PROJECT if intent.name:
            project = await turn.create_project(intent.name, intent.description or "")
            return (
                f"✅ Created project *{project.name}* (`{project.project_id}`); it is now your active "
                f"project. Tell me what to build in it."
            )
        case IntentKind.LIST_PROJECTS:
            return await run_command(turn, "/list")  # the /list wording, written once
        case IntentKind.RUN_TASK:
            return await turn.run_task(intent.task or text, team(intent.agents))
        case IntentKind.STATUS:
            return await turn.session_status(intent.session_ref)
        case IntentKind.RESULT:
            return await turn.session_result(intent.session_ref)
        case IntentKind.FILES:
            return await turn.session_files(intent.session_ref)
        case IntentKind.HELP:
            return catalog.HELP
        case IntentKind.AGENTS:
            return catalog.agents_text()
        case IntentKind.GREETING:
            return GREETING
        case _:
            quoted = text.strip().replace("\n", " ")
            quoted = quoted if len(quoted) <= 80 else quoted[:77] + "..."
            return f"🤔 Sorry, I didn't understand “{quoted}”. Type /help to see what I can do."
