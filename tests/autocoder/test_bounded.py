"""What the server keeps per project or session while it works is dropped when the work ends.

Unit level: our own Store and Pipeline, run for real on a temporary data dir (the built-in
generators, no LLM), looked at from the inside.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from autocoder.config import AutoCoderConfig
from autocoder.pipeline import Pipeline
from autocoder.storage import Session, Store


async def wait_all(pipeline: Pipeline, timeout_s: float = 60) -> None:
    await asyncio.wait_for(asyncio.gather(*pipeline._tasks), timeout_s)


def started(session: Session) -> str:
    return next(e.ts for e in session.events if e.message.startswith("session started"))


async def test_finished_sessions_leave_no_locks_tasks_or_bookkeeping(tmp_path: Path) -> None:
    store = Store(tmp_path)
    pipeline = Pipeline(store, AutoCoderConfig(data_dir=tmp_path, llm="builtin"), None)
    sessions = []
    for i in range(20):
        project = store.create_project("owner", f"p{i}", "")
        # Two sessions per project: the second waits for the first's lock.
        for _ in range(2):
            session = store.create_session(project, "plan it", ["planner"])
            pipeline.start(session)
            sessions.append(session)
    await asyncio.sleep(0)
    assert len(pipeline._project_locks) == 20
    await wait_all(pipeline)

    assert all(s.status == "succeeded" for s in sessions)
    assert pipeline._project_locks == {}
    assert pipeline._tasks == set()
    # The store's per-session bookkeeping (what the journal last recorded) went with them.
    assert store._journaled == {}
    await store.close()


async def test_sessions_of_one_project_still_run_one_at_a_time(tmp_path: Path) -> None:
    store = Store(tmp_path)
    pipeline = Pipeline(store, AutoCoderConfig(data_dir=tmp_path, llm="builtin"), None)
    project = store.create_project("owner", "shared", "")
    sessions = [store.create_session(project, "plan it", ["planner"]) for _ in range(4)]
    for session in sessions:
        pipeline.start(session)
    await wait_all(pipeline)
    spans = sorted((started(s), s.finished_at or "") for s in sessions)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans
    assert pipeline._project_locks == {}
    await store.close()
