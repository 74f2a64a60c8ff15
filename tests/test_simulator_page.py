"""The WhatsApp simulator page as a newcomer sees it: `make run` serves it, and a real browser
(Debian's chromium, driven by Playwright) talks to the bot through it the way a WhatsApp user
would. Formatting, progress pushed as it happens, file links, ticks up to read, two chats side
by side, an attached image: all checked on what the page shows. The conversation's screenshot
is the README's (docs/images/simulator.png)."""

from __future__ import annotations

import io
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, Playwright, Request, expect, sync_playwright
from wacoder import keys

from tests.harness import HASH_SALT, MakeRun, RedisServer, make_run_env, user_of

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "simulator.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Numbers no other test module uses.
ALICE, BOB, CAROL = "+15558950001", "+15558950002", "+15558950003"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def make_run(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    env = make_run_env(
        REDIS_URL=redis_server.url,
        PHONE_HASH_SALT=HASH_SALT,
        ALLOWED_PHONE_NUMBERS=f"{ALICE},{BOB},{CAROL}",
        AUTOCODER_SANDBOX="auto" if shutil.which("bwrap") else "none",
    )
    run = MakeRun(tmp_path_factory.mktemp("make-run"), env)
    try:
        run.wait_line(r"Ctrl-C stops everything")
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="module")
def page_url(make_run: MakeRun) -> str:
    """The page's address, as `make run` prints it."""
    return make_run.wait_line(r"WhatsApp simulator: open (http://\S+)").group(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def launch(playwright: Playwright) -> Browser:
    # Debian's chromium, not a downloaded one.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def open_chats(page: Page, url: str, *phones: str) -> None:
    page.goto(f"{url}/#{','.join(phones)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    for phone in phones:
        expect(chat(page, phone)).to_be_visible()


def chat(page: Page, phone: str) -> Any:
    return page.locator(f'.chat[data-phone="{phone}"]')


def type_message(page: Page, phone: str, text: str) -> None:
    box = chat(page, phone).locator("input.entry")
    box.fill(text)
    box.press("Enter")


def bot_bubble(page: Page, phone: str, text: str | re.Pattern[str]) -> Any:
    return chat(page, phone).locator(".bubble.bot", has_text=text)


def test_a_conversation_as_a_whatsapp_user_sees_it(
    page: Page, page_url: str, make_run: MakeRun, redis_server: RedisServer
) -> None:
    open_chats(page, page_url, ALICE)
    # The whitelisted numbers are offered.
    assert page.locator("#phones option").evaluate_all("os => os.map(o => o.value)") == [ALICE, BOB, CAROL]

    type_message(page, ALICE, "/help")
    mine = chat(page, ALICE).locator(".bubble.mine", has_text="/help")
    expect(mine.locator(".ticks")).to_have_attribute("data-status", "accepted")  # the webhook said 200
    help_reply = bot_bubble(page, ALICE, "Commands")
    # WhatsApp formatting rendered: *bold* and _italic_, no markers left.
    expect(help_reply.locator("strong", has_text="WhatsApp-Coder")).to_be_visible()
    expect(help_reply.locator("strong", has_text="Commands")).to_be_visible()
    expect(help_reply.locator("em", has_text="build a REST API with user authentication")).to_be_visible()
    assert "*Commands*" not in help_reply.inner_text()
    # The page is open and focused: the reply goes sent -> delivered -> read, and the webhook
    # recorded the signed `read` callback as it records Twilio's.
    expect(help_reply.locator(".ticks")).to_have_attribute("data-status", "read")
    sid = help_reply.get_attribute("data-sid")
    assert sid
    rdb = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert rdb.hget(keys.delivery(user_of(make_run.env, ALICE), sid), "status") == "read"

    # A coding request. From here on the page asks for nothing: what arrives is pushed to it.
    requests: list[str] = []

    def asked(request: Request) -> None:
        requests.append(request.url)

    type_message(page, ALICE, "build a REST API with user authentication")
    expect(bot_bubble(page, ALICE, "Started session")).to_be_visible()
    page.on("request", asked)
    for agent in ("planner", "developer", "tester"):
        progress = bot_bubble(page, ALICE, re.compile(rf"✅ {agent} done"))
        expect(progress.locator("strong", has_text=agent).first).to_be_visible(timeout=60_000)
    summary = bot_bubble(page, ALICE, "🏁 Session")
    expect(summary).to_contain_text("succeeded", timeout=60_000)
    passed = re.search(r"Tests: (\d+) passed, 0 failed", summary.inner_text())
    assert passed and int(passed.group(1)) > 0, summary.inner_text()
    assert [u for u in requests if "/_sim/send" not in u and "/_sim/read" not in u] == [], requests

    # The summary's links (the files as one zip, and the first ones worth opening) are links
    # the user can tap, and they download: the README itself, and a zip that holds it.
    text = summary.inner_text()
    readme_url = re.search(r"- README\.md: (http://\S+)", text)
    zip_url = re.search(r"All as zip: (http://\S+)", text)
    assert readme_url and zip_url, text
    hrefs = summary.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert {readme_url.group(1), zip_url.group(1)} <= set(hrefs), (hrefs, text)
    readme = page.request.get(readme_url.group(1))
    assert readme.status == 200 and b"#" in readme.body()  # a Markdown heading, not an error page
    archive = page.request.get(zip_url.group(1))
    assert archive.status == 200
    with zipfile.ZipFile(io.BytesIO(archive.body())) as files:
        assert files.read("README.md") == readme.body()

    # Every reply ends read.
    ticks = chat(page, ALICE).locator(".bubble.bot .ticks")
    expect(ticks.last).to_have_attribute("data-status", "read")
    # The README's picture: the coding request at the top, then what came back.
    page.set_viewport_size({"width": 760, "height": 1000})
    request = chat(page, ALICE).locator(".bubble.mine", has_text="build a REST API")
    request.evaluate(
        "b => b.parentElement.scrollTop += b.getBoundingClientRect().top"
        " - b.parentElement.getBoundingClientRect().top - 12"
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))


def test_two_chats_side_by_side_stay_isolated(page: Page, page_url: str) -> None:
    open_chats(page, page_url, BOB, CAROL)
    type_message(page, BOB, "/new alpha")
    expect(bot_bubble(page, BOB, "alpha")).to_be_visible()
    type_message(page, CAROL, "/list")
    carol_reply = chat(page, CAROL).locator(".bubble.bot")
    expect(carol_reply).to_have_count(1)
    # Carol sees her own (empty) list, not Bob's project; neither chat shows the other's messages.
    assert "alpha" not in carol_reply.inner_text()
    assert chat(page, BOB).locator(".bubble.mine").all_inner_texts()[0].startswith("/new alpha")
    assert [t.split("\n")[0] for t in chat(page, CAROL).locator(".bubble.mine").all_inner_texts()] == [
        "/list"
    ]
    expect(chat(page, BOB).locator(".bubble")).to_have_count(2)
    # Each chat's replies are the messages the bot sent to that number.
    sent = httpx.get(f"{page_url}/_sim/messages").json()["messages"]
    for phone in (BOB, CAROL):
        sids = set(chat(page, phone).locator(".bubble.bot").evaluate_all("bs => bs.map(b => b.dataset.sid)"))
        assert sids and all(m["to"] == f"whatsapp:{phone}" for m in sent if m["sid"] in sids)


FORMATTING = [
    ("*bold* _italic_ ~gone~", "<strong>bold</strong> <em>italic</em> <del>gone</del>"),
    ("```x = *1*\n_y_```", "<pre><code>x = *1*\n_y_</code></pre>"),
    ("run `sess_1_a` now", "run <code>sess_1_a</code> now"),
    ("app/__init__.py snake_case_name 2*3*4", "app/__init__.py snake_case_name 2*3*4"),
    ("* not bold * <b>x</b>", "* not bold * &lt;b&gt;x&lt;/b&gt;"),
    (
        "see http://h/files/a_b_c.py?x=1&y=_2_.",
        'see <a href="http://h/files/a_b_c.py?x=1&amp;y=_2_" target="_blank" rel="noopener">'
        "http://h/files/a_b_c.py?x=1&amp;y=_2_</a>.",
    ),
]


def test_whatsapp_formatting_as_the_page_renders_it(page: Page, page_url: str) -> None:
    page.goto(page_url)
    for text, html in FORMATTING:
        assert page.evaluate("formatWhatsApp", text) == html, text


def png(width: int = 4, height: int = 4) -> bytes:
    """A small, valid PNG (teal pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x00\x80\x69" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_an_attachment_is_posted_as_twilio_posts_media(
    page: Page, page_url: str, make_run: MakeRun, tmp_path: Path
) -> None:
    open_chats(page, page_url, CAROL)
    image = tmp_path / "sketch.png"
    image.write_bytes(png())
    voice = tmp_path / "voice-note.ogg"
    voice.write_bytes(b"OggS" + bytes(60))
    for path, caption in ((image, "what do you think of this?"), (voice, "")):
        chat(page, CAROL).locator("input[type=file]").set_input_files(str(path))
        expect(chat(page, CAROL).locator(".attachment-name")).to_contain_text(path.name)
        type_message(page, CAROL, caption)  # with no text, the attachment goes alone

    picture = chat(page, CAROL).locator(".bubble.mine img.media")
    expect(picture).to_be_visible()
    sound = chat(page, CAROL).locator(".bubble.mine audio.media")
    expect(sound).to_have_count(1)
    for media in ("img", "audio"):  # a tick each: the webhook took them
        ticks = chat(page, CAROL).locator(f".bubble.mine:has({media}.media) .ticks")
        expect(ticks).to_have_attribute("data-status", "accepted")
    posted = {
        m["body"]: m
        for m in httpx.get(f"{page_url}/_sim/messages").json()["inbound"]
        if m["from"] == f"whatsapp:{CAROL}"
    }
    for body, path, content_type, kind, shown in (
        ("what do you think of this?", image, "image/png", "image", picture),
        ("", voice, "audio/ogg", "audio", sound),
    ):
        message = posted[body]
        form = message["form"]
        # Twilio's fields for a message with media, and the webhook took its signature (200).
        assert message["answer"] == 200 and message["sid"].startswith("MM")
        assert form["NumMedia"] == "1" and form["MediaContentType0"] == content_type
        assert form["MessageType"] == kind
        assert form["MediaUrl0"] == shown.get_attribute("src")
        # Hosted where Twilio's API is, as Twilio hosts media: the agent fetches it from there only.
        assert form["MediaUrl0"].startswith(f"{make_run.env['TWILIO_API_BASE_URL']}/2010-04-01/Accounts/")
        fetched = httpx.get(form["MediaUrl0"])
        assert fetched.status_code == 200 and fetched.content == path.read_bytes()
        assert fetched.headers["content-type"].startswith(content_type)
