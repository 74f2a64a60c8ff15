"""The store's snapshot + journal at every crash point of a compaction (unit level, real files)."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autocoder.storage import Store


def state(store: Store) -> dict[str, Any]:
    return {
        "projects": {k: asdict(v) for k, v in store.projects.items()},
        "sessions": {k: asdict(v) for k, v in store.sessions.items()},
        "keys": sorted(map(tuple, store.keys.dump())),
    }


def work(store: Store, tag: str) -> None:
    """A project with a keyed, finished session and a few events: a dozen journal records."""
    project = store.create_project("owner", tag, "", key=f"{tag}:create_project:0")
    session = store.create_session(project, "plan it", ["planner"], key=f"{tag}:execute_coding_task:0")
    store.add_event(session, "session queued: planner")
    session.status = "running"
    store.add_event(session, "session started")
    session.agent_status["planner"] = "done"
    session.files.append("PLAN.md")
    session.progress = 100
    store.add_event(session, "planner done", "planner", "done")
    store.set_spec(project, {"title": tag})
    session.status = "succeeded"
    session.finished_at = "2026-01-01T00:00:00.000Z"
    store.add_event(session, "session succeeded")


async def test_a_reload_replays_the_journal_exactly(tmp_path: Path) -> None:
    store = Store(tmp_path)
    work(store, "a")
    work(store, "b")
    expected = state(store)
    await store.close()
    assert state(Store(tmp_path)) == expected


async def test_crash_after_rotation_before_the_snapshot(tmp_path: Path) -> None:
    store = Store(tmp_path)
    work(store, "a")
    expected = state(store)
    await store.close()
    # The journal became `.1`, the new snapshot never came: everything is in `.1`.
    journal = tmp_path / "journal.jsonl"
    journal.rename(tmp_path / "journal.jsonl.1")
    journal.touch()
    reloaded = Store(tmp_path)
    assert state(reloaded) == expected
    assert not (tmp_path / "journal.jsonl.1").exists()  # folded into the snapshot at start
    await reloaded.close()


async def test_crash_after_the_snapshot_before_dropping_the_old_journal(tmp_path: Path) -> None:
    store = Store(tmp_path)
    work(store, "a")
    await store.close()
    old_journal = tmp_path / "old.jsonl"
    shutil.copy(tmp_path / "journal.jsonl", old_journal)
    # A load folds the journal into the snapshot; then the old journal reappears as `.1`.
    store = Store(tmp_path)
    work(store, "b")
    expected = state(store)
    await store.close()
    old_journal.rename(tmp_path / "journal.jsonl.1")
    # Records the snapshot already holds are skipped, not applied twice (no doubled events).
    assert state(Store(tmp_path)) == expected


async def test_compaction_while_serving_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path, journal_max_records=5)
    for i in range(6):
        work(store, f"p{i}")
        await asyncio.sleep(0)  # the compaction task runs now and then, as on the server
    if store._compaction is not None:
        await store._compaction
    expected = state(store)
    await store.close()
    assert json.loads((tmp_path / "index.json").read_text())["n"] > 0  # compacted while it ran
    assert state(Store(tmp_path)) == expected
