"""Short signed links (/f/<token>): one per file and one zip of a session's files (ADR 0002)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from autocoder.signing import ShortLinks

from tests.autocoder.conftest import SIGNING_KEY, AutoCoderServer, call, mcp_client, wait_finished


async def finished_session(
    server: AutoCoderServer, task: str, agents: list[str] | None = None
) -> dict[str, Any]:
    """get_session_files of a finished session, with its project id."""
    async with mcp_client(server.mcp_url) as s:
        project = await call(s, "create_project", name="links")
        extra = {"agents": agents} if agents else {}
        queued = await call(s, "execute_coding_task", project_id=project["project_id"], task=task, **extra)
        await wait_finished(s, queued["session_id"], timeout_s=90)
        listing = await call(s, "get_session_files", session_id=queued["session_id"])
    return listing | {"project_id": project["project_id"]}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def listing(autocoder: AutoCoderServer) -> AsyncIterator[dict[str, Any]]:
    yield await finished_session(autocoder, "build a REST API with user authentication")


def test_links_are_short(listing: dict[str, Any], autocoder: AutoCoderServer) -> None:
    assert len(listing["files"]) >= 5
    for url in [listing["archive_url"], *(f["short_url"] for f in listing["files"])]:
        assert url.startswith(f"{autocoder.base_url}/f/")
        token = url.rsplit("/", 1)[1]
        assert 30 <= len(token) <= 40 and "?" not in url, url
    assert listing["archive_expires_at"] > time.time() + 3000  # an hour by default


def test_the_zip_holds_exactly_the_sessions_files(listing: dict[str, Any]) -> None:
    answer = httpx.get(listing["archive_url"], timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"].startswith('attachment; filename="links-')
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None  # every entry's CRC checks out
        names = archive.namelist()
        assert names == [f["path"] for f in listing["files"]]
        for entry in listing["files"]:
            # The same bytes as the file's own link serves, and as many as get_session_files says.
            content = archive.read(entry["path"])
            assert len(content) == entry["size"], entry["path"]
            assert content == httpx.get(entry["short_url"]).content, entry["path"]


def test_a_file_link_serves_that_file_as_text(listing: dict[str, Any]) -> None:
    readme = next(f for f in listing["files"] if f["path"] == "README.md")
    answer = httpx.get(readme["short_url"])
    assert answer.status_code == 200 and answer.text.startswith("# ")
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.content == httpx.get(readme["download_url"]).content  # the long link still works


def _tweak(ch: str) -> str:
    return "A" if ch != "A" else "B"


@pytest.mark.parametrize("where", [0, 1, 5, 12, 20, -10, -2, -1])
def test_changing_any_character_of_a_token_is_refused(listing: dict[str, Any], where: int) -> None:
    for url in (listing["archive_url"], listing["files"][0]["short_url"]):
        i = len(url) + where if where < 0 else url.rindex("/") + 1 + where
        tampered = url[:i] + _tweak(url[i]) + url[i + 1 :]
        answer = httpx.get(tampered)
        assert answer.status_code == 403, (where, answer.status_code)
        assert answer.text == "This link is not valid."


@pytest.mark.parametrize("token", ["x", "A" * 36, "A" * 200, "%00%00", "..%2F..%2Fsigning.key", "-_-_" * 9])
def test_garbage_tokens_are_refused_not_errors(autocoder: AutoCoderServer, token: str) -> None:
    answer = httpx.get(f"{autocoder.base_url}/f/{token}")
    assert answer.status_code in (403, 404), answer.status_code
    assert len(answer.text) < 100


def test_a_token_for_a_session_this_server_never_had(autocoder: AutoCoderServer) -> None:
    links = ShortLinks(SIGNING_KEY.encode(), autocoder.base_url, 600)
    url, _ = links.archive("sess_" + "0" * 16)
    answer = httpx.get(url)
    assert answer.status_code == 404 and "gone" in answer.text
    url, _ = links.file("sess_" + "0" * 16, 0)
    assert httpx.get(url).status_code == 404


def test_an_index_beyond_the_sessions_files_is_not_found(
    autocoder: AutoCoderServer, listing: dict[str, Any]
) -> None:
    links = ShortLinks(SIGNING_KEY.encode(), autocoder.base_url, 600)
    url, _ = links.file(listing["session_id"], 9999)
    assert httpx.get(url).status_code == 404


async def test_a_session_without_files_has_no_zip(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="empty")
        queued = await call(
            s, "execute_coding_task", project_id=project["project_id"], task="x", agents=["planner"]
        )
        listing = await call(s, "get_session_files", session_id=queued["session_id"])
    if not listing["files"]:  # asked at once: the planner may not have written yet
        assert listing["archive_url"] is None and listing["archive_expires_at"] is None


@pytest.fixture(scope="module")
def short_lived() -> Iterator[AutoCoderServer]:
    server = AutoCoderServer(AUTOCODER_URL_TTL_S="2").start()
    yield server
    server.stop()
    server.cleanup()


async def test_an_expired_link_is_gone(short_lived: AutoCoderServer) -> None:
    listing = await finished_session(short_lived, "plan a blog", agents=["planner"])
    urls = [listing["archive_url"], listing["files"][0]["short_url"]]
    async with httpx.AsyncClient() as http:
        for url in urls:
            assert (await http.get(url)).status_code == 200
        await asyncio.sleep(max(0.0, int(listing["archive_expires_at"]) + 1.1 - time.time()))
        for url in urls:
            answer = await http.get(url)
            assert answer.status_code == 410
            assert "expired" in answer.text and "/files" in answer.text
