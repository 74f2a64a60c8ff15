"""The checks media go through before they are used (agent.media, autocoder.design), in process:
types, first bytes, size limits, which URLs may carry Twilio's credentials (redirects included),
the design reference's bounds, and how the reply is put together. Media over real processes:
tests/test_media.py."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib

import httpx
import pytest
from agent.media import (
    IMAGE_ALONE_OFFLINE,
    IMAGE_PASSED_ON,
    MAX_REFERENCE_BYTES,
    Image,
    MediaInput,
    MediaReader,
    MediaRefused,
    compose,
    design_reference,
    kind_of,
    looks_like,
    unsupported_note,
)
from autocoder import design
from wacoder.botconfig import BotConfigSource
from wacoder.settings import Settings

SID = "AC" + "2" * 32
TWILIO = "https://api.twilio.test"
MEDIA = f"{TWILIO}/2010-04-01/Accounts/{SID}/Messages/MM1/Media/ME1"
PNG = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 7, 5, 8, 0, 0, 0, 0)


def reader(handler: httpx.MockTransport, **overrides: str) -> MediaReader:
    values = {"twilio_account_sid": SID, "twilio_auth_token": "token", "twilio_api_base_url": TWILIO}
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        wacoder_env="production",
        **{**values, **overrides},  # type: ignore[arg-type]
    )
    return MediaReader(settings, BotConfigSource(settings), httpx.AsyncClient(transport=handler))


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("image/png", "image"),
        ("IMAGE/JPEG", "image"),
        ("audio/ogg; codecs=opus", "audio"),
        ("audio/amr", "unsupported"),  # WhatsApp has it, the transcription endpoint does not
        ("video/mp4", "unsupported"),
        ("application/pdf", "unsupported"),
        ("", "unsupported"),
    ],
)
def test_kinds(content_type: str, kind: str) -> None:
    assert kind_of(content_type) == kind


def test_an_image_must_start_as_its_type_says() -> None:
    assert looks_like("image/png", PNG)
    assert not looks_like("image/jpeg", PNG)
    assert looks_like("image/webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    assert not looks_like("image/webp", b"RIFF\x00\x00\x00\x00WAVEfmt ")


def test_unsupported_media_are_named_for_the_user() -> None:
    assert unsupported_note("video/mp4").startswith("📎 I can't use videos.")
    assert unsupported_note("application/pdf").startswith("📎 I can't use documents.")
    assert unsupported_note("application/x-thing").startswith("📎 I can't use this kind of file.")


def test_credentials_go_to_twilio_only_and_never_follow_a_redirect_away() -> None:
    seen: list[tuple[str, str | None]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.host == "api.twilio.test":
            return httpx.Response(307, headers={"location": "https://cdn.example/signed?x=1"})
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    media = reader(httpx.MockTransport(handle))
    assert asyncio.run(media.fetch(MEDIA, "image/png", 1000)) == PNG
    [(first, auth), (second, cdn_auth)] = seen
    assert first == MEDIA and auth == "Basic " + base64.b64encode(f"{SID}:token".encode()).decode()
    assert second.startswith("https://cdn.example/") and cdn_auth is None


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/2010-04-01/Accounts/" + SID + "/Messages/MM1/Media/ME1",
        "http://api.twilio.test/2010-04-01/Accounts/" + SID + "/Messages/MM1/Media/ME1",  # not https
        "https://api.twilio.test:8443/2010-04-01/Accounts/" + SID + "/Messages/MM1/Media/ME1",
        "https://api.twilio.test/2010-04-01/Accounts/ACother/Messages/MM1/Media/ME1",  # another account
        "https://api.twilio.test.evil.example/2010-04-01/Accounts/" + SID + "/Messages/MM1/Media/ME1",
    ],
)
def test_a_url_that_is_not_our_accounts_media_at_twilio_is_not_fetched(url: str) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG)

    with pytest.raises(MediaRefused, match="isn't hosted by Twilio"):
        asyncio.run(reader(httpx.MockTransport(handle)).fetch(url, "image/png", 1000))
    assert seen == []


def test_size_is_checked_from_the_header_and_while_reading() -> None:
    def declared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=PNG * 100, headers={"content-type": "image/png"})

    with pytest.raises(MediaRefused, match="too large"):
        asyncio.run(reader(httpx.MockTransport(declared)).fetch(MEDIA, "image/png", 1000))

    def streamed(request: httpx.Request) -> httpx.Response:  # no Content-Length
        return httpx.Response(200, stream=httpx.ByteStream(PNG * 100), headers={"content-type": "image/png"})

    with pytest.raises(MediaRefused, match="too large"):
        asyncio.run(reader(httpx.MockTransport(streamed)).fetch(MEDIA, "image/png", 1000))


def test_a_served_type_of_another_family_is_refused() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>", headers={"content-type": "text/html"})

    with pytest.raises(MediaRefused, match="documents"):
        asyncio.run(reader(httpx.MockTransport(handle)).fetch(MEDIA, "image/png", 1000))


def test_no_twilio_token_in_production_fetches_nothing() -> None:
    media = reader(httpx.MockTransport(lambda r: httpx.Response(200, content=PNG)), twilio_auth_token="")
    with pytest.raises(MediaRefused, match="no Twilio credentials"):
        asyncio.run(media.fetch(MEDIA, "image/png", 1000))


def test_the_design_reference_keeps_images_in_order_while_they_fit() -> None:
    small, big = Image("image/png", PNG), Image("image/png", PNG + bytes(MAX_REFERENCE_BYTES))
    assert [r["data"] for r in design_reference([small, small])] == [base64.b64encode(PNG).decode()] * 2
    assert len(design_reference([small, big, small])) == 1
    assert design_reference([small] * 5) == design_reference([small] * 3)


def test_the_reply_quotes_what_was_heard_then_answers_then_notes() -> None:
    heard = MediaInput(text="build a todo app", heard=["build a todo app"], notes=["📎 note"])
    assert compose(heard, "On it.", llm=True, passed_on=False) == "🎤 “build a todo app”\n\nOn it.\n\n📎 note"
    image = MediaInput(text="", images=[Image("image/png", PNG)])
    assert compose(image, None, llm=False, passed_on=False) == IMAGE_ALONE_OFFLINE
    assert compose(image, "Started.", llm=False, passed_on=True) == f"Started.\n\n{IMAGE_PASSED_ON}"


def test_autocoder_checks_a_design_reference() -> None:
    rows = b"".join(b"\x00" + b"\x00" * 3 for _ in range(2))
    png = PNG[:16] + struct.pack(">II", 3, 2) + PNG[24:] + zlib.compress(rows)
    [image] = design.decode(
        [design.DesignImage(content_type="image/png", data=base64.b64encode(png).decode())]
    )
    assert image.size == (3, 2) and "3×2 px" in design.notes([image])
    with pytest.raises(design.DesignReferenceError, match="not a image/jpeg"):
        design.decode([design.DesignImage(content_type="image/jpeg", data=base64.b64encode(png).decode())])
    with pytest.raises(design.DesignReferenceError, match="base64"):
        design.decode([design.DesignImage(content_type="image/png", data="not base64!")])
    too_much = base64.b64encode(PNG + bytes(design.MAX_TOTAL_BYTES // 2)).decode()
    with pytest.raises(design.DesignReferenceError, match="in all"):
        design.decode([design.DesignImage(content_type="image/png", data=too_much)] * 3)
