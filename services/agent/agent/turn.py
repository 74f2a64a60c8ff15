"""One user's turn: their state, their identity towards AutoCoder, and the actions that
commands, the offline router and the LLM's tools all share (so each action is written once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wacoder import templates

from agent import metrics
from agent.autocoder import AutoCoder, ToolError
from agent.links import all_files, summary_links
from agent.media import Image, design_reference
from agent.router import project_name_for
from agent.sharing import Sharing
from agent.state import ConversationState, Project

SESSION_STATUS_ICONS = {"queued": "⏳", "running": "⚙️", "succeeded": "✅", "failed": "❌", "cancelled": "🛑"}


@dataclass
class Turn:
    state: ConversationState
    caller: str
    autocoder: AutoCoder
    # What caused this turn (Twilio's MessageSid): the root of the idempotency keys of the
    # AutoCoder calls that create things, so that redoing the turn after a crash creates nothing new.
    cause: str
    # Side effects to commit with the reply: projects to link to the user, sessions to watch.
    linked_projects: list[str] = field(default_factory=list)
    started_sessions: list[tuple[str, Project]] = field(default_factory=list)
    cleared: bool = False
    # /share and /unshare: the whitelist, the number hash, and what they leave to do (agent.sharing).
    sharing: Sharing | None = None
    # The message's images (agent.media): the LLM sees them, and a session started in this turn
    # gets them as its design reference.
    images: list[Image] = field(default_factory=list)
    passed_on_images: bool = False
    _creations: int = 0

    def _idempotency_key(self, tool: str) -> str:
        # The n-th creating call of the turn: a redo makes the same calls in the same order.
        self._creations += 1
        return f"{self.cause}:{tool}:{self._creations}"

    async def create_project(self, name: str, description: str) -> Project:
        result = await self.autocoder.call(
            self.caller,
            "create_project",
            name=name,
            description=description,
            idempotency_key=self._idempotency_key("create_project"),
        )
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
        """Runs `task` in the active project; with none, in a new project named after the task
        (the seed's flow: understand, create a project if needed, run, report)."""
        project = self.state.active_project
        opening = ""
        if project is None:
            listed = await self.list_projects()
            taken = {p["name"].lower() for p in listed}
            project = await self.create_project(unique_name(project_name_for(task), taken), task[:200])
            # On a redo the list already holds the project the first attempt created (AutoCoder
            # answers its idempotency key with it): it is not one of "your other projects".
            others = [p for p in listed if p["project_id"] != project.project_id]
            others_note = " Your other projects: /list." if others else ""
            opening = f"📁 Created project *{project.name}* (`{project.project_id}`) for this.{others_note}\n"
        result = await self.start_session(project, task, agents)
        team = ", ".join(result.get("agents", []))
        quoted = task if len(task) <= 120 else task[:117] + "..."
        return (
            f"{opening}🚀 Started session `{result['session_id']}` in *{project.name}* with: {team}.\n"
            f"Task: {quoted}\n"
            f"I'll send progress here. /status for details."
        )

    async def start_session(self, project: Project, task: str, agents: list[str] | None) -> dict[str, Any]:
        """Starts a coding session and has its progress relayed to this user."""
        arguments: dict[str, Any] = {
            "project_id": project.project_id,
            "task": task,
            "idempotency_key": self._idempotency_key("execute_coding_task"),
        }
        if agents:
            arguments["agents"] = agents
        if reference := design_reference(self.images):
            arguments["design_reference"] = reference
        result = await self.autocoder.call(self.caller, "execute_coding_task", **arguments)
        self.passed_on_images = self.passed_on_images or bool(reference)
        self.state.last_session = result["session_id"]
        self.started_sessions.append((result["session_id"], project))
        metrics.SESSIONS_STARTED.inc()
        return dict(result)

    def _session_ref(self, ref: str | None) -> str | None:
        return ref.strip() if ref else self.state.last_session

    async def session_status(self, ref: str | None) -> str:
        session_id = self._session_ref(ref)
        if session_id is None:
            return "No coding session yet. Start one with /run <task>."
        details = await self.autocoder.call(self.caller, "get_session_details", session_id=session_id)
        return format_status(details)

    async def session_result(self, ref: str | None) -> str:
        """What a session made: its summary, then its most relevant files."""
        status = await self.session_status(ref)
        session_id = self._session_ref(ref)
        if session_id is None:
            return status
        result = await self.autocoder.call(self.caller, "get_session_files", session_id=session_id)
        links = summary_links(result)
        return f"{status}\n\n{links}" if links else status

    async def session_files(self, ref: str | None) -> str:
        session_id = self._session_ref(ref)
        if session_id is None:
            return "No coding session yet. Start one with /run <task>."
        result = await self.autocoder.call(self.caller, "get_session_files", session_id=session_id)
        if not result.get("files"):
            return f"Session `{session_id}` has no files yet. /status shows how far it got."
        return all_files(session_id, result)

    def clear(self) -> None:
        self.state.history.clear()
        self.state.active_project = None
        self.state.last_session = None
        self.cleared = True

    @staticmethod
    def explain(error: ToolError) -> str:
        """A tool error, worded for the user (and counted)."""
        metrics.ERRORS.labels("tool_error").inc()
        text = str(error)
        if "project not found" in text.lower():
            return templates.PROJECT_NOT_FOUND
        if "session not found" in text.lower():
            return "🔎 Session not found. /status shows your latest session."
        return f"⚠️ {text}"


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... when the user already has a project called that."""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


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
