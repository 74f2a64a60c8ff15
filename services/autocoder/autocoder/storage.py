"""Projects, sessions and their files.

The index (who owns which project, what each session did) is kept in memory and written to
`index.json` in the data dir after every change, so a restart keeps it. It is small and only
this process writes it, so a full atomic rewrite is simpler than a database and good enough
for a reference server. Generated files live under `projects/{project_id}/`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Never listed or served: caches a test run leaves behind, and our own bookkeeping.
HIDDEN_PARTS = frozenset({"__pycache__", ".pytest_cache", ".autocoder"})


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NotFoundError(LookupError):
    """An id that does not exist or belongs to someone else: callers cannot tell which."""


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


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.projects_dir = data_dir / "projects"
        self.projects_dir.mkdir(parents=True, exist_ok=True)
        self.index_path = data_dir / "index.json"
        self.projects: dict[str, Project] = {}
        self.sessions: dict[str, Session] = {}
        self._load()

    # ---- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        if not self.index_path.exists():
            return
        try:
            raw = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            log.exception("index unreadable, starting empty", extra={"path": str(self.index_path)})
            return
        for p in raw.get("projects", []):
            self.projects[p["project_id"]] = Project(**p)
        for s in raw.get("sessions", []):
            s["events"] = [Event(**e) for e in s.get("events", [])]
            session = Session(**s)
            # Its background task died with the previous process: say so instead of "running" forever.
            if session.active:
                session.status = "failed"
                session.summary = "interrupted: the AutoCoder server restarted"
                session.finished_at = utc_now()
                for name, st in session.agent_status.items():
                    if st in ("pending", "running"):
                        session.agent_status[name] = "failed" if st == "running" else "skipped"
            self.sessions[session.session_id] = session

    def save(self) -> None:
        data = {
            "projects": [asdict(p) for p in self.projects.values()],
            "sessions": [asdict(s) for s in self.sessions.values()],
        }
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".index-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.index_path)

    # ---- projects and sessions -----------------------------------------------------------------

    def create_project(self, owner: str, name: str, description: str) -> Project:
        project = Project(
            project_id="proj_" + secrets.token_hex(5), owner=owner, name=name, description=description
        )
        self.projects[project.project_id] = project
        self.project_dir(project.project_id).mkdir(parents=True, exist_ok=True)
        self.save()
        return project

    def project(self, owner: str, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None or project.owner != owner:
            raise NotFoundError("project not found")
        return project

    def projects_of(self, owner: str) -> list[Project]:
        return sorted((p for p in self.projects.values() if p.owner == owner), key=lambda p: p.created_at)

    def project_status(self, project: Project) -> str:
        """ "new" before any session, else the latest session's status."""
        if not project.sessions:
            return "new"
        latest = self.sessions.get(project.sessions[-1])
        return latest.status if latest else "new"

    def create_session(self, project: Project, task: str, agents: list[str]) -> Session:
        session = Session(
            session_id="sess_" + secrets.token_hex(8),
            project_id=project.project_id,
            owner=project.owner,
            task=task,
            agents=agents,
            agent_status=dict.fromkeys(agents, "pending"),
        )
        self.sessions[session.session_id] = session
        project.sessions.append(session.session_id)
        self.save()
        return session

    def session(self, owner: str, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.owner != owner:
            raise NotFoundError("session not found")
        return session

    def active_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if s.active)

    def add_event(
        self, session: Session, message: str, agent: str | None = None, agent_status: str | None = None
    ) -> Event:
        event = Event(
            seq=len(session.events) + 1,
            ts=utc_now(),
            status=session.status,
            agent=agent,
            agent_status=agent_status,
            message=message,
            progress=session.progress,
        )
        session.events.append(event)
        self.save()
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
