"""The store's persistence: a snapshot (`index.json`) plus an append-only journal (JSON lines).

Every change appends one line to `journal.jsonl`: one write(2) into the page cache, cheap
enough for the event loop and proportional to the change (rewriting the whole index per event
was proportional to everything ever stored). A written line survives a crash of this process;
`sync` (fsync, in a thread) makes it survive a crash of the machine, and the tools that create
things await it before they answer. A line torn by a crash mid-write is the last one of its
file: replay ignores it, and the compaction that follows a load drops it for good.

Compaction folds the journal into a new snapshot (at start, and when the journal grows past a
limit). Records carry an increasing `n` and the snapshot the last `n` it contains, so every
crash point is safe: the journal is renamed to `journal.jsonl.1` (new records go to a fresh
file), the snapshot is written atomically, then `.1` is deleted; a replay skips what the
snapshot already holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_snapshot(path: Path) -> dict[str, Any]:
    """The snapshot, {} when there is none. An unreadable one is moved aside, never overwritten."""
    try:
        raw = json.loads(path.read_bytes())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return raw
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        aside = path.with_name(f"{path.name}.unreadable")
        log.exception("snapshot unreadable, moved aside", extra={"path": str(path), "aside": str(aside)})
        os.replace(path, aside)
        return {}


def write_snapshot(path: Path, data: dict[str, Any]) -> None:
    """Atomically: the old snapshot or the new one is there, whenever the machine stops."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.last_n = 0  # the `n` of the newest record, in the journal or the snapshot
        self.records = 0  # lines in the current file
        self._fd: int | None = None

    def replay(self, after_n: int) -> Iterator[dict[str, Any]]:
        """The records newer than the snapshot's `after_n`, oldest first (`.1` before the current file)."""
        self.last_n = max(self.last_n, after_n)
        for path in (self.rotated, self.path):
            for record in self._read(path):
                n = record.get("n")
                if isinstance(n, int) and n > after_n:
                    self.last_n = max(self.last_n, n)
                    yield record

    def _read(self, path: Path) -> Iterator[dict[str, Any]]:
        try:
            lines = path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                # The last line torn by a crash mid-write is expected; anything else is damage.
                torn = all(not rest.strip() for rest in lines[number:])
                level = logging.WARNING if torn else logging.ERROR
                log.log(
                    level, "journal line skipped", extra={"path": str(path), "line": number, "torn": torn}
                )
                continue
            yield record

    def start_fresh(self) -> None:
        """After a snapshot holding everything: drop the old journals and open an empty one."""
        self.close_fd()
        self.rotated.unlink(missing_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.fsync(self._fd)
        self.records = 0

    def rotate(self) -> int:
        """Moves the current file to `.1` and opens an empty one; returns the old fd, for the
        caller to close (off the loop, after its last fsync)."""
        assert self._fd is not None, "journal not open"
        old = self._fd
        os.replace(self.path, self.rotated)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.records = 0
        return old

    def append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "journal not open"
        self.last_n += 1
        line = json.dumps({"n": self.last_n, **record}, separators=(",", ":")).encode() + b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self.records += 1

    async def sync(self) -> None:
        """fsync in a thread. On a duplicate of the fd, so a rotation meanwhile cannot close it."""
        if self._fd is not None:
            await asyncio.to_thread(_fsync_and_close, os.dup(self._fd))

    def close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _fsync_and_close(fd)
