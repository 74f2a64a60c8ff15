"""A session's files as the user sees them: one zip link and the few files worth opening first
(the summary), or every file (/files). AutoCoder gives each file a short link (`short_url`)
and the session a zip (`archive_url`); with a server that has neither, its long links serve."""

from __future__ import annotations

import re
import time
from typing import Any

# Where the code usually starts, most likely first.
_MAIN_MODULES = ("app/main.py", "main.py", "app.py", "src/main.py", "server.py", "index.js", "index.html")
_CODE = re.compile(r"\.(py|js|ts|tsx|jsx|go|rs|java|rb|html|sql)$")
_TEST = re.compile(r"(^|/)(tests?/|test_[^/]*$|[^/]*_test\.\w+$|[^/]*\.test\.\w+$)")


def url_of(entry: dict[str, Any]) -> str:
    return str(entry.get("short_url") or entry.get("download_url") or "")


def _is_test(path: str) -> bool:
    return bool(_TEST.search(path))


def _filler(path: str) -> bool:
    """Files nobody opens first: package markers, configuration of the test runner."""
    name = path.rsplit("/", 1)[-1]
    return name in ("__init__.py", "conftest.py", "pytest.ini", ".gitignore", "requirements.txt")


def relevant_files(files: list[dict[str, Any]], most: int = 3) -> list[dict[str, Any]]:
    """The README, the main module and the tests (in that order), then whatever else the session
    wrote, in its order, until `most`."""
    by_path = {str(f.get("path", "")): f for f in files}
    paths = list(by_path)
    chosen: list[str] = []

    def pick(candidates: list[str]) -> None:
        for path in candidates:
            if path not in chosen:
                chosen.append(path)
                return

    readmes = [p for p in paths if p.rsplit("/", 1)[-1].lower().startswith("readme")]
    pick(sorted(readmes, key=lambda p: p.count("/")))
    code = [p for p in paths if _CODE.search(p) and not _is_test(p) and not _filler(p)]
    pick([p for p in _MAIN_MODULES if p in by_path] + [p for p in code if p.endswith("/main.py")] + code)
    pick([p for p in paths if _is_test(p) and not _filler(p)])
    for path in paths:
        if len(chosen) >= most:
            break
        if not _filler(path):
            pick([path])
    return [by_path[p] for p in chosen[:most]]


def _expiry(listing: dict[str, Any]) -> str:
    expires = listing.get("archive_expires_at")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return "Links expire"
    minutes = max(1, round((expires - time.time()) / 60))
    return f"Links expire in {minutes // 60} h" if minutes >= 60 else f"Links expire in {minutes} min"


def _file_line(entry: dict[str, Any]) -> str:
    return f"- {entry.get('path')} ({entry.get('size', 0)} B): {url_of(entry)}"


def summary_links(listing: dict[str, Any]) -> str:
    """For the end-of-session summary: the zip and the three most relevant files."""
    files = [f for f in listing.get("files") or [] if isinstance(f, dict)]
    if not files:
        return ""
    lines = [f"*Files* ({len(files)})"]
    if listing.get("archive_url"):
        lines.append(f"📦 All as zip: {listing['archive_url']}")
    lines += [f"- {f.get('path')}: {url_of(f)}" for f in relevant_files(files)]
    lines.append(f"/files lists all. {_expiry(listing)}.")
    return "\n".join(lines)


def all_files(session_id: str, listing: dict[str, Any]) -> str:
    """/files: the zip, then every file."""
    files = [f for f in listing.get("files") or [] if isinstance(f, dict)]
    lines = [f"*Session* `{session_id}`: {len(files)} file(s)"]
    if listing.get("archive_url"):
        lines.append(f"📦 All as zip: {listing['archive_url']}")
    lines += [_file_line(f) for f in files]
    lines.append(f"\n{_expiry(listing)}; ask /files again for fresh ones.")
    return "\n".join(lines)
