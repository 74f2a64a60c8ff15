"""Projects, sessions and their files.

The index (who owns which project, what each session did, which idempotency key created what)
is kept in memory. Every change is appended to a journal and folded into the `index.json`
snapshot now and then (journal.py), so a restart keeps it and an event costs a line, not a
rewrite of everything. Generated files live under `projects/{project_id}/`; reading and writing
them blocks, so async callers run those methods in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autocoder.idempotency import IdempotencyKeys
from autocoder.journal import Journal, read_snapshot, write_snapshot

log = logging.getLogger(__name__)

# Never listed or served: caches a test run leaves behind, and our own bookkeeping.
HIDDEN_PARTS = frozenset({"__pycache__", ".pytest_cache", ".autocoder"})


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NotFoundError(LookupError):
    """An id that does not exist or belongs to someone else: callers cannot tell which."""


class NotOwnerError(PermissionError):
    """A member of a shared project asked for what only its owner may do (share, unshare)."""


@dataclass
class Event:
    seq: int
    ts: str
    status: str
    agent: str | None
    agent_status: str | None
    message: str
    progress: int


@dataclass
class Session:
    session_id: str
    project_id: str
    owner: str
    task: str
    agents: list[str]
    agent_status: dict[str, str]
    status: str = "queued"
    progress: int = 0
    events: list[Event] = field(default_factory=list)
    test_results: dict[str, Any] | None = None
    summary: str = ""
    files: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    # Who started it: the owner, or a member of the shared project (their idempotency keys).
    started_by: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")


@dataclass
class Project:
    project_id: str
    owner: str
    name: str
    description: str
    created_at: str = field(default_factory=utc_now)
    sessions: list[str] = field(default_factory=list)
    # What the developer agent built (entity, features), so a later "write tests" knows the code.
    spec: dict[str, Any] | None = None
    # Callers the owner shared the project with: they list it, run in it, see its sessions.
    members: list[str] = field(default_factory=list)

    def open_to(self, caller: str) -> bool:
        return caller == self.owner or caller in self.members


def _mutable_fields(session: Session) -> dict[str, Any]:
    """Copies of the fields the pipeline changes in place (events aside)."""
    return {
        "status": session.status,
        "progress": session.progress,
        "agent_status": dict(session.agent_status),
        "test_results": dict(session.test_results) if session.test_results is not None else None,
        "summary": session.summary,
        "files": list(session.files),
        "finished_at": session.finished_at,
    }


_UNSET = object()


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int


class Store:
    def __init__(
        self,
        data_dir: Path,
        *,
        journal_max_records: int = 10_000,
        idempotency_ttl_s: float = 24 * 3600,
        idempotency_max_keys: int = 20_000,
    ) -> None:
        self.data_dir = data_dir
        self.projects_dir = data_dir / "projects"
        self.projects_dir.mkdir(parents=True, exist_ok=True)
        self.index_path = data_dir / "index.json"
        self.journal = Journal(data_dir / "journal.jsonl")
        self.journal_max_records = max(1, journal_max_records)
        self.projects: dict[str, Project] = {}
        self.sessions: dict[str, Session] = {}
        self.keys = IdempotencyKeys(idempotency_ttl_s, idempotency_max_keys)
        # What the journal last said about each active session's fields, so an event records
        # only what changed since (the pipeline changes them in place, then adds an event).
        self._journaled: dict[str, dict[str, Any]] = {}
        self._compaction: asyncio.Task[None] | None = None
        # A failed compaction leaves `journal.jsonl.1` behind, which the next rotation would
        # overwrite: the journal then just grows until the restart folds it in.
        self._compaction_failed = False
        self._load()

    # ---- persistence (journal.py) ---------------------------------------------------------------

    def _load(self) -> None:
        snapshot = read_snapshot(self.index_path)
        for p in snapshot.get("projects", []):
            self.projects[p["project_id"]] = Project(**p)
        for s in snapshot.get("sessions", []):
            s["events"] = [Event(**e) for e in s.get("events", [])]
            self.sessions[s["session_id"]] = Session(**s)
        for owner, kind, key, target, created in snapshot.get("idempotency", []):
            self.keys.put(owner, kind, key, target, created)
        replayed = 0
        for record in self.journal.replay(int(snapshot.get("n", 0))):
            try:
                self._apply(record)
                replayed += 1
            except (KeyError, TypeError, ValueError):
                log.exception("journal record not applied", extra={"n": record.get("n")})
        for session in self.sessions.values():
            # Its background task died with the previous process: say so instead of "running" forever.
            if session.active:
                session.status = "failed"
                session.summary = "interrupted: the AutoCoder server restarted"
                session.finished_at = utc_now()
                for name, st in session.agent_status.items():
                    if st in ("pending", "running"):
                        session.agent_status[name] = "failed" if st == "running" else "skipped"
        # Before the server serves: fold everything into a fresh snapshot, start an empty journal.
        self._compact_now()
        log.info(
            "store loaded",
            extra={"projects": len(self.projects), "sessions": len(self.sessions), "replayed": replayed},
        )

    def _apply(self, record: dict[str, Any]) -> None:
        """Replays one journal record (the same change the live method made)."""
        op = record["op"]
        if op == "project":
            project = Project(**record["project"])
            self.projects[project.project_id] = project
            if record.get("key"):
                self.keys.put(project.owner, "project", record["key"], project.project_id, record["t"])
        elif op == "session":
            session = Session(**{**record["session"], "events": []})
            self.sessions[session.session_id] = session
            self.projects[session.project_id].sessions.append(session.session_id)
            if record.get("key"):
                starter = session.started_by or session.owner
                self.keys.put(starter, "session", record["key"], session.session_id, record["t"])
        elif op == "event":
            session = self.sessions[record["session_id"]]
            for name, value in record["set"].items():
                setattr(session, name, value)
            session.events.append(Event(**record["event"]))
        elif op == "spec":
            self.projects[record["project_id"]].spec = record["spec"]
        elif op == "members":
            self.projects[record["project_id"]].members = list(record["members"])
        else:
            raise ValueError(f"unknown journal op {op!r}")

    def _append(self, record: dict[str, Any]) -> None:
        """Journals a change already made in memory (last, so a compaction includes it)."""
        self.journal.append(record)
        if (
            self.journal.records >= self.journal_max_records
            and self._compaction is None
            and not self._compaction_failed
        ):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a test): compact right here
                self._compact_now()
                return
            self._compaction = loop.create_task(self._compact(), name="store-compaction")

    def _snapshot_data(self, n: int, sessions: list[Session]) -> dict[str, Any]:
        return {
            "n": n,
            "projects": [asdict(p) for p in self.projects.values()],
            "sessions": [asdict(s) for s in sessions],
            "idempotency": self.keys.dump(),
        }

    def _compact_now(self) -> None:
        sessions = list(self.sessions.values())
        write_snapshot(self.index_path, self._snapshot_data(self.journal.last_n, sessions))
        self.journal.start_fresh()

    async def _compact(self) -> None:
        try:
            # On the loop: a consistent copy of what changes (projects, active sessions, keys).
            # Finished sessions never change again, so the thread serializes those itself.
            n = self.journal.last_n
            active = [asdict(s) for s in self.sessions.values() if s.active]
            finished = [s for s in self.sessions.values() if not s.active]
            data = self._snapshot_data(n, [])
            data["sessions"] = active
            old_fd = self.journal.rotate()

            def write() -> None:
                os.close(old_fd)  # its records are in the snapshot about to be written
                data["sessions"] += [asdict(s) for s in finished]
                write_snapshot(self.index_path, data)
                self.journal.rotated.unlink(missing_ok=True)

            await asyncio.to_thread(write)
            log.info("store compacted", extra={"n": n, "sessions": len(data["sessions"])})
        except Exception:
            self._compaction_failed = True
            log.exception("store compaction failed; the journal keeps everything")
        finally:
            self._compaction = None

    async def sync(self) -> None:
        """Everything recorded so far survives a crash of the machine, not only of the process."""
        await self.journal.sync()

    async def close(self) -> None:
        if self._compaction is not None:
            await asyncio.shield(self._compaction)
        await asyncio.to_thread(self.journal.close_fd)

    # ---- projects and sessions -----------------------------------------------------------------

    def create_project(self, owner: str, name: str, description: str, key: str | None = None) -> Project:
        project = Project(
            project_id="proj_" + secrets.token_hex(5), owner=owner, name=name, description=description
        )
        created = time.time()
        self.projects[project.project_id] = project
        if key:
            self.keys.put(owner, "project", key, project.project_id, created)
        # One record for the project and its key: after a crash, both exist or neither.
        self._append({"op": "project", "project": asdict(project), "key": key, "t": created})
        self.project_dir(project.project_id).mkdir(parents=True, exist_ok=True)
        return project

    def remembered_project(self, owner: str, key: str) -> Project | None:
        """The project an earlier create_project with this key created."""
        project_id = self.keys.get(owner, "project", key)
        return self.projects.get(project_id) if project_id else None

    def project(self, caller: str, project_id: str) -> Project:
        """A project the caller owns or is a member of."""
        project = self.projects.get(project_id)
        if project is None or not project.open_to(caller):
            raise NotFoundError("project not found")
        return project

    def owned_project(self, caller: str, project_id: str) -> Project:
        """A project the caller owns; a member hears that only the owner may, a stranger "not found"."""
        project = self.project(caller, project_id)
        if project.owner != caller:
            raise NotOwnerError("only the project's owner can do that")
        return project

    def projects_of(self, caller: str) -> list[Project]:
        """Owned and shared with the caller, oldest first."""
        return sorted((p for p in self.projects.values() if p.open_to(caller)), key=lambda p: p.created_at)

    def set_members(self, project: Project, members: list[str]) -> None:
        project.members = members
        self._append({"op": "members", "project_id": project.project_id, "members": members})

    def project_status(self, project: Project) -> str:
        """ "new" before any session, else the latest session's status."""
        if not project.sessions:
            return "new"
        latest = self.sessions.get(project.sessions[-1])
        return latest.status if latest else "new"

    def set_spec(self, project: Project, spec: dict[str, Any]) -> None:
        project.spec = spec
        self._append({"op": "spec", "project_id": project.project_id, "spec": spec})

    def create_session(
        self,
        project: Project,
        task: str,
        agents: list[str],
        key: str | None = None,
        started_by: str | None = None,
    ) -> Session:
        session = Session(
            session_id="sess_" + secrets.token_hex(8),
            project_id=project.project_id,
            owner=project.owner,
            task=task,
            agents=agents,
            agent_status=dict.fromkeys(agents, "pending"),
            started_by=started_by or project.owner,
        )
        created = time.time()
        self.sessions[session.session_id] = session
        project.sessions.append(session.session_id)
        if key:
            self.keys.put(session.started_by or project.owner, "session", key, session.session_id, created)
        self._journaled[session.session_id] = _mutable_fields(session)
        self._append({"op": "session", "session": asdict(session), "key": key, "t": created})
        return session

    def remembered_session(self, caller: str, key: str) -> Session | None:
        """The session an earlier execute_coding_task with this key created (while the caller
        may still see it: a member's key says nothing once the project is unshared)."""
        session_id = self.keys.get(caller, "session", key)
        session = self.sessions.get(session_id) if session_id else None
        project = self.projects.get(session.project_id) if session else None
        return session if project is not None and project.open_to(caller) else None

    def session(self, caller: str, session_id: str) -> Session:
        """A session of a project the caller owns or is a member of."""
        session = self.sessions.get(session_id)
        project = self.projects.get(session.project_id) if session else None
        if session is None or project is None or not project.open_to(caller):
            raise NotFoundError("session not found")
        return session

    def active_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if s.active)

    def add_event(
        self, session: Session, message: str, agent: str | None = None, agent_status: str | None = None
    ) -> Event:
        """Appends an event, and records it with whatever else of the session changed since the last one."""
        event = Event(
            seq=len(session.events) + 1,
            ts=utc_now(),
            status=session.status,
            agent=agent,
            agent_status=agent_status,
            message=message,
            progress=session.progress,
        )
        fields = _mutable_fields(session)
        before = self._journaled.get(session.session_id, {})
        changed = {name: value for name, value in fields.items() if before.get(name, _UNSET) != value}
        session.events.append(event)
        if session.active:
            self._journaled[session.session_id] = fields
        else:  # a finished session changes no more
            self._journaled.pop(session.session_id, None)
        self._append(
            {"op": "event", "session_id": session.session_id, "event": asdict(event), "set": changed}
        )
        return event

    # ---- files -------------------------------------------------------------------------------

    def project_dir(self, project_id: str) -> Path:
        return self.projects_dir / project_id

    def resolve(self, project_id: str, rel_path: str) -> Path | None:
        """The file `rel_path` inside the project, or None when the path would leave it."""
        root = self.project_dir(project_id).resolve()
        if not rel_path or rel_path.startswith(("/", "\\")) or "\x00" in rel_path:
            return None
        candidate = (root / rel_path).resolve()
        if not candidate.is_relative_to(root) or candidate == root:
            return None
        if HIDDEN_PARTS.intersection(candidate.relative_to(root).parts):
            return None
        return candidate

    def write_file(self, project_id: str, rel_path: str, content: str) -> StoredFile:
        target = self.resolve(project_id, rel_path)
        if target is None:
            raise ValueError(f"refusing to write outside the project: {rel_path!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return StoredFile(
            path=target.relative_to(self.project_dir(project_id).resolve()).as_posix(),
            size=target.stat().st_size,
        )

    def read_text(self, project_id: str, rel_path: str) -> str | None:
        target = self.resolve(project_id, rel_path)
        if target is None or not target.is_file():
            return None
        return target.read_text(encoding="utf-8", errors="replace")

    def list_files(self, project_id: str) -> list[StoredFile]:
        root = self.project_dir(project_id)
        found: list[StoredFile] = []
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not HIDDEN_PARTS.intersection(rel.parts) and path.suffix != ".pyc":
                found.append(StoredFile(path=rel.as_posix(), size=path.stat().st_size))
        return found

    def stat(self, project_id: str, rel_path: str) -> StoredFile | None:
        target = self.resolve(project_id, rel_path)
        if target is None or not target.is_file():
            return None
        return StoredFile(path=rel_path, size=target.stat().st_size)


def load_or_create_key(data_dir: Path) -> bytes:
    """The persisted random signing key, so URLs stay valid across restarts."""
    key_path = data_dir / "signing.key"
    if key_path.exists():
        return key_path.read_bytes()
    key = secrets.token_bytes(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
