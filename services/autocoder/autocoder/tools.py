"""The six MCP tools (schemas in docs/adr/0002-autocoder-tool-schemas.md).

Every tool answers a JSON object described by a pydantic model, so clients get an
`outputSchema` and `structuredContent`. The caller is whoever the request's `_meta.caller`
names (the mcp-bridge sends a phone-number hash); every lookup is scoped to it, and an id that
exists but belongs to someone else gets the same error as one that does not exist.

The tools are coroutines: FastMCP runs a plain function on the event loop itself, where a
slow one would hold up every other request. What blocks (file stats, an fsync) goes to a thread.
The tools that create things take an optional `idempotency_key`: a repeat returns what the
first call created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from autocoder import design
from autocoder.agents.selection import PIPELINE_ORDER, UnknownAgentError, order_agents, select_agents
from autocoder.config import VERSION
from autocoder.design import DesignReferenceArg
from autocoder.pipeline import Pipeline
from autocoder.sandbox import SandboxUnavailableError, isolation, policy_from_environment
from autocoder.signing import UrlSigner
from autocoder.storage import NotFoundError, Session, Store

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
MAX_TASK_CHARS = 4000

IdempotencyKey = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=200,
        description="makes a repeat safe: the same caller sending the same key again gets the first "
        "call's result and nothing new is created (keys are remembered for 24 h by default)",
    ),
]

SessionStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
AgentStatus = Literal["pending", "running", "done", "failed", "skipped"]


class ProjectCreated(BaseModel):
    project_id: str
    name: str
    description: str
    created_at: str


class ProjectSummary(ProjectCreated):
    status: str = Field(description='"new" before any session, else the latest session\'s status')
    sessions: list[str] = Field(description="the project's session ids, oldest first")
    role: Literal["owner", "member"] = Field(
        default="owner", description='"member" when the owner shared it with the caller (share_project)'
    )


class ProjectList(BaseModel):
    projects: list[ProjectSummary]


class TaskQueued(BaseModel):
    session_id: str
    project_id: str
    status: Literal["queued"]
    agents: list[str] = Field(description="the agents that will run, in pipeline order")


class SessionEvent(BaseModel):
    seq: int
    ts: str
    status: SessionStatus
    agent: str | None
    agent_status: AgentStatus | None
    message: str
    progress: int


class TestResults(BaseModel):
    passed: int
    failed: int
    errors: int
    total: int
    output_tail: str


class SessionDetails(BaseModel):
    session_id: str
    project_id: str
    task: str
    status: SessionStatus
    progress: int = Field(ge=0, le=100)
    agents: dict[str, AgentStatus]
    events: list[SessionEvent]
    test_results: TestResults | None
    summary: str
    created_at: str
    finished_at: str | None


class SessionFile(BaseModel):
    name: str
    path: str
    size: int
    download_url: str
    expires_at: int = Field(description="unix seconds after which download_url stops working")
    short_url: str = Field(description="the same file behind a short signed link (/f/<token>), as long valid")


class SessionFiles(BaseModel):
    session_id: str
    files: list[SessionFile]
    archive_url: str | None = Field(
        default=None, description="a short signed link to all of files as one zip; null when there are none"
    )
    archive_expires_at: int | None = Field(default=None, description="unix seconds; null with archive_url")


class SessionCancelled(BaseModel):
    session_id: str
    status: SessionStatus = Field(description='"cancelled", or how the session had already ended')
    cancelled: bool = Field(description="true when this call stopped it; false when it had already ended")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    agents: list[str]
    llm: Literal["openai", "builtin"]
    active_sessions: int
    uptime_s: float
    sandbox: str = Field(
        description='where generated tests run: "bwrap" (the jail), "unshare" or "socket-guard" '
        '(development fallbacks), or "refused" (no jail, and this deployment requires one)'
    )


def caller_of(ctx: Context[Any, Any, Any]) -> str:
    meta = ctx.request_context.meta
    caller = getattr(meta, "caller", None) if meta is not None else None
    return caller if isinstance(caller, str) and caller else ANONYMOUS


def register_tools(mcp: FastMCP, store: Store, pipeline: Pipeline, signer: UrlSigner, llm_kind: str) -> None:
    started = time.monotonic()

    def not_found(exc: NotFoundError) -> ToolError:
        return ToolError(str(exc))

    @mcp.tool()
    async def create_project(
        name: Annotated[str, Field(min_length=1, max_length=100, description="project name")],
        ctx: Context[Any, Any, Any],
        description: Annotated[str, Field(max_length=2000, description="what the project is for")] = "",
        idempotency_key: IdempotencyKey = None,
    ) -> ProjectCreated:
        """Create a new, empty AutoCoder project owned by the caller."""
        caller = caller_of(ctx)
        # No await between the lookup and the creation: a concurrent repeat cannot slip in between.
        project = store.remembered_project(caller, idempotency_key) if idempotency_key else None
        if project is None:
            project = store.create_project(caller, name.strip(), description.strip(), idempotency_key)
            log.info("project created", extra={"project_id": project.project_id, "caller": project.owner})
        await store.sync()  # the project and its key survive a crash once the caller hears of them
        return ProjectCreated(
            project_id=project.project_id,
            name=project.name,
            description=project.description,
            created_at=project.created_at,
        )

    @mcp.tool()
    async def list_projects(ctx: Context[Any, Any, Any]) -> ProjectList:
        """List the caller's projects (owned, and shared with the caller), oldest first, with their
        status and session ids."""
        caller = caller_of(ctx)
        return ProjectList(
            projects=[
                ProjectSummary(
                    project_id=p.project_id,
                    name=p.name,
                    description=p.description,
                    created_at=p.created_at,
                    status=store.project_status(p),
                    sessions=list(p.sessions),
                    role="owner" if p.owner == caller else "member",
                )
                for p in store.projects_of(caller)
            ]
        )

    @mcp.tool()
    async def execute_coding_task(
        project_id: str,
        task: Annotated[str, Field(min_length=1, max_length=MAX_TASK_CHARS, description="what to build")],
        ctx: Context[Any, Any, Any],
        agents: Annotated[
            list[str] | None,
            Field(description=f"agents to run, any of {list(PIPELINE_ORDER)}; omitted: chosen from the task"),
        ] = None,
        idempotency_key: IdempotencyKey = None,
        design_reference: DesignReferenceArg = None,
    ) -> TaskQueued:
        """Start a coding session on a project. Returns at once (status "queued"); the agents run in
        the background in the order planner, database, developer, uiux, devops, tester. Poll
        get_session_details for progress."""
        caller = caller_of(ctx)
        try:
            references = design.decode(design_reference)
        except design.DesignReferenceError as exc:
            raise ToolError(str(exc)) from None
        # As in create_project: lookup and creation in one step of the loop. A repeat starts nothing.
        session = store.remembered_session(caller, idempotency_key) if idempotency_key else None
        if session is None:
            if references:  # a design is the UI/UX agent's to follow
                agents = [*(agents or select_agents(task)), "uiux"]
            session = start_session(caller, project_id, task, agents, idempotency_key, references)
        await store.sync()
        return TaskQueued(
            session_id=session.session_id,
            project_id=session.project_id,
            status="queued",
            agents=session.agents,
        )

    def start_session(
        caller: str,
        project_id: str,
        task: str,
        agents: list[str] | None,
        key: str | None,
        references: list[design.ReferenceImage] | None = None,
    ) -> Session:
        try:
            project = store.project(caller, project_id)
        except NotFoundError as exc:
            raise not_found(exc) from None
        try:
            chosen = order_agents(agents) if agents else select_agents(task)
        except UnknownAgentError as exc:
            raise ToolError(str(exc)) from None
        session = store.create_session(project, task.strip(), chosen, key, started_by=caller)
        store.add_event(session, f"session queued: {', '.join(chosen)}")
        if references:
            pipeline.design_references[session.session_id] = references
        pipeline.start(session)
        return session

    @mcp.tool()
    async def get_session_details(
        session_id: str,
        ctx: Context[Any, Any, Any],
        since_event: Annotated[int, Field(ge=0, description="only events with a greater seq")] = 0,
    ) -> SessionDetails:
        """Status, progress, per-agent status, events, test results and summary of a session."""
        try:
            s = store.session(caller_of(ctx), session_id)
        except NotFoundError as exc:
            raise not_found(exc) from None
        return SessionDetails(
            session_id=s.session_id,
            project_id=s.project_id,
            task=s.task,
            status=s.status,  # type: ignore[arg-type]
            progress=s.progress,
            agents=s.agent_status,  # type: ignore[arg-type]
            events=[
                SessionEvent.model_validate(e, from_attributes=True) for e in s.events if e.seq > since_event
            ],
            test_results=TestResults(**s.test_results) if s.test_results else None,
            summary=s.summary,
            created_at=s.created_at,
            finished_at=s.finished_at,
        )

    @mcp.tool()
    async def get_session_files(session_id: str, ctx: Context[Any, Any, Any]) -> SessionFiles:
        """The files a session wrote, each with a signed download URL that expires."""
        try:
            s = store.session(caller_of(ctx), session_id)
        except NotFoundError as exc:
            raise not_found(exc) from None
        files = await asyncio.to_thread(signed_files, s.session_id, s.project_id, list(s.files))
        archive_url, archive_exp = signer.short.archive(s.session_id) if files else (None, None)
        return SessionFiles(
            session_id=s.session_id, files=files, archive_url=archive_url, archive_expires_at=archive_exp
        )

    def signed_files(session_id: str, project_id: str, paths: list[str]) -> list[SessionFile]:
        """In a thread: a stat and an HMAC per file, and a session may have written many."""
        files = []
        for index, path in enumerate(paths):
            stat = store.stat(project_id, path)
            if stat is None:
                continue
            url, exp = signer.sign(project_id, path)
            short_url, _ = signer.short.file(session_id, index)
            files.append(
                SessionFile(
                    name=path.rsplit("/", 1)[-1],
                    path=path,
                    size=stat.size,
                    download_url=url,
                    expires_at=exp,
                    short_url=short_url,
                )
            )
        return files

    @mcp.tool(annotations=ToolAnnotations(idempotentHint=True, destructiveHint=True))
    async def cancel_session(session_id: str, ctx: Context[Any, Any, Any]) -> SessionCancelled:
        """Stop a queued or running session: its agents stop, a running test run is killed, and it
        ends with status "cancelled". Safe to repeat: a session that has already ended is left as it
        is and the answer says how it ended (cancelled: false)."""
        try:
            s = store.session(caller_of(ctx), session_id)
        except NotFoundError as exc:
            raise not_found(exc) from None
        stopped = await pipeline.cancel(s)
        await store.sync()
        return SessionCancelled(session_id=s.session_id, status=s.status, cancelled=stopped)  # type: ignore[arg-type]

    @mcp.tool()
    async def check_system_health() -> Health:
        """Whether AutoCoder is up, its agents, which LLM backs them, and how busy it is."""
        try:
            sandbox: str = await isolation(policy_from_environment())  # probed once, then remembered
        except SandboxUnavailableError:
            sandbox = "refused"
        return Health(
            status="ok",
            version=VERSION,
            agents=list(PIPELINE_ORDER),
            llm=llm_kind,  # type: ignore[arg-type]
            active_sessions=store.active_sessions(),
            uptime_s=round(time.monotonic() - started, 1),
            sandbox=sandbox,
        )
