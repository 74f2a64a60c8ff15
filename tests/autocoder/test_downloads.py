"""Signed, expiring download URLs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
import pytest_asyncio
from autocoder.signing import UrlSigner

from tests.autocoder.conftest import SIGNING_KEY, AutoCoderServer, call, mcp_client, wait_finished


async def plan_file(server: AutoCoderServer) -> dict[str, str]:
    """PLAN.md of a fresh planner-only session: (download_url, project_id, content)."""
    async with mcp_client(server.mcp_url) as s:
        project = await call(s, "create_project", name="downloads")
        queued = await call(
            s, "execute_coding_task", project_id=project["project_id"], task="plan a blog", agents=["planner"]
        )
        await wait_finished(s, queued["session_id"])
        files = (await call(s, "get_session_files", session_id=queued["session_id"]))["files"]
    entry = next(f for f in files if f["path"] == "PLAN.md")
    return {
        "url": entry["download_url"],
        "project_id": project["project_id"],
        "expires_at": entry["expires_at"],
    }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def plan(autocoder: AutoCoderServer) -> AsyncIterator[dict[str, str]]:
    yield await plan_file(autocoder)


def test_a_valid_url_downloads_the_file(plan: dict[str, str]) -> None:
    response = httpx.get(plan["url"])
    assert response.status_code == 200
    assert response.text.startswith("# ")
    assert response.headers["content-type"].startswith("text/plain")  # never rendered on our origin


def _tweak(ch: str) -> str:
    if ch.isdigit():
        return "7" if ch != "7" else "3"
    if ch in "abcdef":
        return "0"
    return "x" if ch != "x" else "y"


def _positions(url: str) -> dict[str, int]:
    parts = urlsplit(url)
    start = url.index(parts.path)
    exp_at = url.index("exp=") + len("exp=")
    sig_at = url.index("sig=") + len("sig=")
    return {
        "project-id": start + len("/files/proj_") + 2,
        "file-name": url.index("PLAN.md") + 1,
        "exp-first": exp_at,
        "exp-last": url.index("&sig=") - 1,
        "sig-first": sig_at,
        "sig-middle": sig_at + 32,
        "sig-last": len(url) - 1,
    }


@pytest.mark.parametrize(
    "where", ["project-id", "file-name", "exp-first", "exp-last", "sig-first", "sig-middle", "sig-last"]
)
def test_changing_any_character_is_refused(plan: dict[str, str], where: str) -> None:
    url = plan["url"]
    i = _positions(url)[where]
    tampered = url[:i] + _tweak(url[i]) + url[i + 1 :]
    assert tampered != url
    assert httpx.get(tampered).status_code == 403


def test_missing_signature_is_refused(plan: dict[str, str]) -> None:
    assert httpx.get(plan["url"].split("?")[0]).status_code == 403


def test_path_traversal_is_refused_even_when_signed(autocoder: AutoCoderServer, plan: dict[str, str]) -> None:
    # Signed with the server's real key: the signature is valid, the path still may not leave the project.
    # The slashes are percent-encoded so no client normalises the dot segments away before sending.
    signer = UrlSigner(SIGNING_KEY.encode(), autocoder.base_url, 600)
    for path in ("../../index.json", "../../signing.key", "../other/PLAN.md", "/etc/passwd"):
        _, exp = signer.sign(plan["project_id"], path)
        sig = signer._mac(plan["project_id"], path, exp)
        url = f"{autocoder.base_url}/files/{plan['project_id']}/{quote(path, safe='')}?exp={exp}&sig={sig}"
        assert httpx.get(url).status_code == 403, path
    raw = f"{autocoder.base_url}/files/{plan['project_id']}/..%2F..%2Findex.json?exp=9999999999&sig=00"
    assert httpx.get(raw).status_code == 403


@pytest.fixture(scope="module")
def short_lived() -> Iterator[AutoCoderServer]:
    server = AutoCoderServer(AUTOCODER_URL_TTL_S="2").start()
    yield server
    server.stop()
    server.cleanup()


async def test_an_expired_url_is_refused(short_lived: AutoCoderServer) -> None:
    plan = await plan_file(short_lived)
    async with httpx.AsyncClient() as http:
        assert (await http.get(plan["url"])).status_code == 200
        await asyncio.sleep(max(0.0, int(plan["expires_at"]) + 1.1 - time.time()))
        assert (await http.get(plan["url"])).status_code == 403
