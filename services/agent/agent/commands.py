"""Slash commands. Each handler takes the user's turn and returns the reply text.

Commands are case-insensitive; bad arguments get the command's usage line; an unknown
command gets the seed's invalid_command template.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wacoder import templates

from agent import catalog, sharing
from agent.autocoder import ToolError
from agent.cancel import CANCEL_USAGE, cancel
from agent.turn import Turn

Handler = Callable[[Turn, str], Awaitable[str]]


@dataclass(frozen=True)
class Command:
    handler: Handler
    usage: str


def _usage(command: str) -> str:
    return f"Usage: {COMMANDS[command].usage}"


async def _help(turn: Turn, args: str) -> str:
    return catalog.HELP


async def _agents(turn: Turn, args: str) -> str:
    return catalog.agents_text()


async def _new(turn: Turn, args: str) -> str:
    name, _, description = args.partition(":")
    name, description = name.strip(), description.strip()
    if not name or len(name) > 60:
        return _usage("/new")
    project = await turn.create_project(name, description)
    return (
        f"✅ Created project *{project.name}* (`{project.project_id}`); it is now your active project.\n"
        f"Next: /run <task>, e.g. _/run build a REST API with user authentication_"
    )


async def _list(turn: Turn, args: str) -> str:
    if args:
        return _usage("/list")
    projects = await turn.list_projects()
    if not projects:
        return "You have no projects yet. Create one with /new <name> [: description]."
    active = turn.state.active_project.project_id if turn.state.active_project else None
    lines = ["*Your projects*"]
    for p in projects:
        mark = " ← active" if p["project_id"] == active else ""
        mark += " · shared with you" if p.get("role") == "member" else ""
        about = f" — {p['description']}" if p.get("description") else ""
        lines.append(f"- *{p['name']}*{about} (`{p['project_id']}`){mark}")
    lines.append("\nSwitch with /use <name or id>.")
    return "\n".join(lines)


async def _use(turn: Turn, args: str) -> str:
    if not args:
        return _usage("/use")
    project = await turn.find_project(args)
    if project is None:
        return templates.PROJECT_NOT_FOUND
    turn.state.active_project = project
    return f"📂 Active project: *{project.name}* (`{project.project_id}`)."


async def _run(turn: Turn, args: str) -> str:
    if not args:
        return _usage("/run")
    return await turn.run_task(args)


async def _status(turn: Turn, args: str) -> str:
    if len(args.split()) > 1:
        return _usage("/status")
    return await turn.session_status(args or None)


async def _files(turn: Turn, args: str) -> str:
    if len(args.split()) > 1:
        return _usage("/files")
    return await turn.session_files(args or None)


async def _clear(turn: Turn, args: str) -> str:
    if args:
        return _usage("/clear")
    turn.clear()
    return "🧹 Conversation cleared. Your projects are still there: /list."


COMMANDS: dict[str, Command] = {
    "/help": Command(_help, "/help"),
    "/new": Command(_new, "/new <name> [: description]"),
    "/list": Command(_list, "/list"),
    "/use": Command(_use, "/use <project name or id>"),
    "/run": Command(_run, "/run <task>"),
    "/status": Command(_status, "/status [session id]"),
    "/files": Command(_files, "/files [session id]"),
    "/cancel": Command(cancel, CANCEL_USAGE),
    "/agents": Command(_agents, "/agents"),
    "/clear": Command(_clear, "/clear"),
    "/share": Command(sharing.share, sharing.SHARE_USAGE),
    "/unshare": Command(sharing.unshare, sharing.UNSHARE_USAGE),
}


def is_command(text: str) -> bool:
    return text.lstrip().startswith("/")


async def run_command(turn: Turn, text: str) -> str:
    word, _, args = text.strip().partition(" ")
    command = COMMANDS.get(word.lower())
    if command is None:
        return templates.INVALID_COMMAND.format(command=word[:40])
    try:
        return await command.handler(turn, args.strip())
    except ToolError as error:
        return turn.explain(error)
