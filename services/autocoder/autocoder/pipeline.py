"""Runs a session's agents in the background and records what happens.

`execute_coding_task` only creates the session and calls `Pipeline.start`; the agents then run
in an asyncio task, one after another in pipeline order, and every step is written to the
session (status, per-agent status, progress, numbered events) so `get_session_details` can be
polled while it runs. Sessions of one project run one at a time: they share its directory.
File I/O runs in threads, so a session never holds up the event loop (and the tools) for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from autocoder import metrics
from autocoder.agents.base import AgentContext, AgentOutput, GeneratedFile, ProjectSpec
from autocoder.agents.builtin import GENERATORS
from autocoder.agents.llm import LLMGenerator
from autocoder.config import AutoCoderConfig
from autocoder.design import ReferenceImage
from autocoder.sandbox import run_pytest
from autocoder.storage import Project, Session, Store, StoredFile, utc_now

log = logging.getLogger(__name__)


@dataclass
class _ProjectLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # sessions holding or waiting for it


class Pipeline:
    def __init__(self, store: Store, config: AutoCoderConfig, llm: LLMGenerator | None) -> None:
        self.store = store
        self.config = config
        self.llm = llm
        self._tasks: set[asyncio.Task[None]] = set()
        # The task of each session that has not ended, and the sessions a caller asked to stop
        # (cancel_session): their CancelledError ends them "cancelled", not "failed".
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()
        # Images a session's UI/UX agent follows (execute_coding_task's design_reference): in
        # memory for the run only, never in the index or the journal.
        self.design_references: dict[str, list[ReferenceImage]] = {}
        # A project's lock exists while sessions hold or wait for it: one per project ever seen
        # would only grow.
        self._project_locks: dict[str, _ProjectLock] = {}

    def start(self, session: Session) -> None:
        task = asyncio.create_task(self._run(session), name=f"session-{session.session_id}")
        # The loop holds only weak references to tasks: keep one until it is done.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._running[session.session_id] = task
        task.add_done_callback(lambda _: self._running.pop(session.session_id, None))

    async def cancel(self, session: Session) -> bool:
        """Stops a session that has not ended; False when it had ended already (nothing is done).
        Returns once its task is over: its agents stopped and a running test run killed (the
        sandbox kills the jail when its task is cancelled), so the answer is its final status."""
        task = self._running.get(session.session_id)
        if not session.active or task is None:
            return False
        self._stopping.add(session.session_id)
        task.cancel()
        # Not `await task`: that would cancel it again if this caller went away. The jail's
        # teardown is bounded (sandbox.JAIL_TEARDOWN_S), so is this wait.
        await asyncio.wait({task}, timeout=30)
        return True

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _project_lock(self, project_id: str) -> AsyncIterator[None]:
        held = self._project_locks.get(project_id)
        if held is None:
            held = self._project_locks[project_id] = _ProjectLock()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._project_locks[project_id]

    async def _run(self, session: Session) -> None:
        try:
            await self._run_in_turn(session)
        except asyncio.CancelledError:
            if session.active:  # still queued behind another session of the project
                self._finish_cancelled(session)
            if session.session_id not in self._stopping:
                raise  # the server is shutting down
        finally:
            self._stopping.discard(session.session_id)
            self.design_references.pop(session.session_id, None)

    def _finish_cancelled(self, session: Session) -> None:
        if session.session_id in self._stopping:
            self._finish(session, "cancelled", "cancelled at the user's request")
        else:
            self._finish(session, "failed", "cancelled: the AutoCoder server is shutting down")

    async def _run_in_turn(self, session: Session) -> None:
        project = self.store.projects[session.project_id]
        async with self._project_lock(project.project_id):
            session.status = "running"
            self.store.add_event(session, f"session started: {', '.join(session.agents)}")
            log.info("session started", extra={"session_id": session.session_id, "agents": session.agents})
            started = time.perf_counter()
            metrics.SESSIONS_RUNNING.inc()
            try:
                await self._run_agents(project, session)
            except asyncio.CancelledError:
                self._finish_cancelled(session)
                raise
            except Exception as exc:  # any agent's failure ends the session, and it says why
                log.exception("session failed", extra={"session_id": session.session_id})
                self._finish(session, "failed", f"{type(exc).__name__}: {exc}")
            finally:
                metrics.SESSIONS_RUNNING.dec()
                metrics.SESSION_SECONDS.labels(session.status).observe(time.perf_counter() - started)

    def _spec_for(self, project: Project, session: Session) -> ProjectSpec:
        # A later session without the developer ("write tests", "add a Dockerfile") works on
        # the code an earlier one generated, so it reuses that session's spec.
        if project.spec and "developer" not in session.agents:
            return ProjectSpec.from_dict(project.spec)
        return ProjectSpec.from_task(project.name, f"{session.task} {project.description}")

    async def _run_agents(self, project: Project, session: Session) -> None:
        spec = self._spec_for(project, session)
        total = len(session.agents)
        tests_ok = True
        stopped_because = ""  # what the sandbox says stopped the test run, if anything
        for index, agent in enumerate(session.agents):
            session.agent_status[agent] = "running"
            agent_started = time.perf_counter()
            self.store.add_event(session, f"{agent} started", agent, "running")
            existing, has_app = await asyncio.to_thread(self._look_around, project.project_id)
            ctx = AgentContext(
                project_id=project.project_id,
                project_name=project.name,
                project_description=project.description,
                task=session.task,
                agents=session.agents,
                spec=spec,
                existing_files=existing,
                has_generated_app=bool(project.spec) and has_app,
                design_reference=self.design_references.get(session.session_id, []),
            )
            output, builtin = await self._generate(agent, ctx, session)
            written = await asyncio.to_thread(self._write_all, project.project_id, output.files)
            for stored in written:
                if stored.path not in session.files:
                    session.files.append(stored.path)
            if agent == "developer" and builtin:
                self.store.set_spec(project, spec.as_dict())
            message = output.message
            status = "done"
            if agent == "tester":
                results = await run_pytest(
                    self.store.project_dir(project.project_id),
                    self.config.test_timeout_s,
                    self.config.test_memory_mb,
                )
                session.test_results = results.as_dict()
                stopped_because = results.note
                tests_ok = results.failed == 0 and results.errors == 0 and results.passed > 0
                status = "done" if tests_ok else "failed"
                message = (
                    f"{message}; pytest: {results.passed} passed, {results.failed} failed, "
                    f"{results.errors} errors"
                )
            session.agent_status[agent] = status
            metrics.AGENT_RUNS.labels(agent, status).inc()
            metrics.AGENT_RUN_SECONDS.labels(agent).observe(time.perf_counter() - agent_started)
            session.progress = round((index + 1) * 100 / total)
            self.store.add_event(session, f"{agent} {status}: {message}", agent, status)
        names = ", ".join(session.files[:8]) + (" …" if len(session.files) > 8 else "")
        if tests_ok:
            self._finish(session, "succeeded", f"{len(session.files)} file(s) written: {names}")
        else:
            # Why, when the sandbox stopped the run (time limit, a limit hit, no jail): the user asks.
            why = f" ({stopped_because})" if stopped_because else ""
            self._finish(
                session,
                "failed",
                f"tests did not pass{why}; {len(session.files)} file(s) written: {names}",
            )

    def _look_around(self, project_id: str) -> tuple[list[str], bool]:
        """(the project's files, whether the generated app is there): in a thread."""
        files = [f.path for f in self.store.list_files(project_id)]
        return files, self.store.stat(project_id, "app/main.py") is not None

    def _write_all(self, project_id: str, files: list[GeneratedFile]) -> list[StoredFile]:
        return [self.store.write_file(project_id, f.path, f.content) for f in files]

    async def _generate(self, agent: str, ctx: AgentContext, session: Session) -> tuple[AgentOutput, bool]:
        """(output, True when the built-in generator made it)."""
        if self.llm is not None:
            try:
                plan = await asyncio.to_thread(self.store.read_text, ctx.project_id, "PLAN.md")
                return await self.llm.generate(agent, ctx, plan), False
            except Exception as exc:  # any LLM trouble: fall back, the session still delivers
                log.warning(
                    "llm failed, using the built-in generator",
                    extra={"agent": agent, "session_id": session.session_id, "error": repr(exc)[:300]},
                )
                self.store.add_event(
                    session, f"{agent}: LLM unavailable, using the built-in generator", agent, "running"
                )
        return GENERATORS[agent](ctx), True

    def _finish(self, session: Session, status: str, summary: str) -> None:
        session.status = status
        session.summary = summary
        session.finished_at = utc_now()
        for name, agent_status in session.agent_status.items():
            if agent_status == "pending":
                session.agent_status[name] = "skipped"
            elif agent_status == "running" and status == "cancelled":
                session.agent_status[name] = "skipped"  # stopped by the user: not the agent's failure
            elif agent_status == "running":
                session.agent_status[name] = "failed"  # it raised, or the server is shutting down
                metrics.AGENT_RUNS.labels(name, "failed").inc()
        if status == "succeeded":
            session.progress = 100
        self.store.add_event(session, f"session {status}: {summary}")
        metrics.SESSIONS_FINISHED.labels(status).inc()
        log.info("session finished", extra={"session_id": session.session_id, "status": status})
