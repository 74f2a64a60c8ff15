"""One user's turn: their state, their identity towards AutoCoder, and the actions that
commands, the offline router and the LLM's tools all share (so each action is written once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wacoder import templates

from agent.autocoder import AutoCoder, ToolError
from agent.state import ConversationState, Project

SESSION_STATUS_ICONS = {"queued": "⏳", "running": "⚙️", "succeeded": "✅", "failed": "❌"}


@dataclass
class Turn:
    state: ConversationState
    caller: str
    autocoder: AutoCoder
    # Side effects to commit with the reply: projects to link to the user, sessions to watch.
    linked_projects: list[str] = field(default_factory=list)
    started_sessions: list[tuple[str, Project]] = field(default_factory=list)
    cleared: bool = False

    async def create_project(self, name: str, description: str) -> Project:
        result = await self.autocoder.call(self.caller, "create_project", name=name, description=description)
        project = Project(result["project_id"], result["name"])
        self.state.active_project = project
        self.linked_projects.append(project.project_id)
        return project

    async def list_projects(self) -> list[dict[str, Any]]:
        result = await self.autocoder.call(self.caller, "list_projects")
        return list(result.get("projects", []))

    async def find_project(self, ref: str) -> Project | None:
        """By id, or by name (case-insensitive); only among the caller's own projects."""
        ref = ref.strip()
        projects = await self.list_projects()
        for p in projects:
            if p["project_id"] == ref:
                return Project(p["project_id"], p["name"])
        matches = [p for p in projects if p["name"].lower() == ref.lower()]
        return Project(matches[0]["project_id"], matches[0]["name"]) if matches else None

    async def run_task(self, task: str, agents: list[str] | None = None) -> str:
        project = self.state.active_project
        if project is None:
            projects = await self.list_projects()
            names = ", ".join(f"*{p['name']}*" for p in projects[:5])
            hint = f"Pick one with /use <name> ({names})" if projects else "Create one with /new <name>"
            return f"Which project should I work on? {hint}, then send /run again."
        result = await self.start_session(project, task, agents)
        team = ", ".join(result.get("agents", []))
        return (
            f"🚀 Started session `{result['session_id']}` in *{project.name}* with: {team}.\n"
            f"I'll send progress here. /status for details."
        )

    async def start_session(self, project: Project, task: str, agents: list[str] | None) -> dict[str, Any]:
        """Starts a coding session and has its progress relayed to this user."""
        arguments: dict[str, Any] = {"project_id": project.project_id, "task": task}
        if agents:
            arguments["agents"] = agents
        result = await self.autocoder.call(self.caller, "execute_coding_task", **arguments)
        self.state.last_session = result["session_id"]
        self.started_sessions.append((result["session_id"], project))
        return dict(result)

    def _session_ref(self, ref: str | None) -> str | None:
        return ref.strip() if ref else self.state.last_session

    async def session_status(self, ref: str | None) -> str:
        session_id = self._session_ref(ref)
        if session_id is None:
            return "No coding session yet. Start one with /run <task>."
        details = await self.autocoder.call(self.caller, "get_session_details", session_id=session_id)
        return format_status(details)

    async def session_files(self, ref: str | None) -> str:
        session_id = self._session_ref(ref)
        if session_id is None:
            return "No coding session yet. Start one with /run <task>."
        result = await self.autocoder.call(self.caller, "get_session_files", session_id=session_id)
        files = result.get("files", [])
        if not files:
            return f"Session `{session_id}` has no files yet. /status shows how far it got."
        listing = files_text(files, most=len(files))
        return f"*Session* `{session_id}`\n{listing}\n\nLinks expire; ask /files again for fresh ones."

    def clear(self) -> None:
        self.state.history.clear()
        self.state.active_project = None
        self.state.last_session = None
        self.cleared = True

    @staticmethod
    def explain(error: ToolError) -> str:
        """A tool error, worded for the user."""
        text = str(error)
        if "project not found" in text.lower():
            return templates.PROJECT_NOT_FOUND
        if "session not found" in text.lower():
            return "🔎 Session not found. /status shows your latest session."
        return f"⚠️ {text}"


def files_text(files: list[dict[str, Any]], most: int = 10) -> str:
    """File links as a list; beyond `most`, a pointer to /files (which lists them all)."""
    lines = [f"*Files* ({len(files)}):"]
    lines += [f"- {f['path']} ({f['size']} B): {f['download_url']}" for f in files[:most]]
    if len(files) > most:
        lines.append(f"...and {len(files) - most} more: /files")
    return "\n".join(lines)


def format_status(details: dict[str, Any]) -> str:
    status = details.get("status", "unknown")
    lines = [
        f"{SESSION_STATUS_ICONS.get(status, '•')} Session `{details.get('session_id')}`: *{status}* "
        f"({details.get('progress', 0)}%)",
        f"Task: _{details.get('task', '')}_",
    ]
    agents = details.get("agents") or {}
    if agents:
        lines.append("Agents: " + ", ".join(f"{name} {state}" for name, state in agents.items()))
    tests = details.get("test_results")
    if tests:
        lines.append(f"Tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed")
    if details.get("summary"):
        lines.append(str(details["summary"]))
    return "\n".join(lines)
