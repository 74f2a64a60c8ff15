"""What a message's attachments add to the turn: images and voice notes, fetched from Twilio,
checked, and kept in memory for this turn only (docs/adr/0002, "Design references").

- Twilio's credentials go only to Twilio's API host (the origin of TWILIO_API_BASE_URL, our own
  account's paths): a media URL anywhere else is refused, never fetched. A redirect from Twilio
  (its media CDN) is followed without the credentials.
- Each medium is checked before it is used: its declared and served type, its size (while it is
  read, so a 20 MB file costs at most the limit), and an image's first bytes.
- Images go to the LLM as image input and to AutoCoder as a design reference; voice notes are
  transcribed through the OpenAI-compatible `/audio/transcriptions` endpoint and handled as the
  text they say. Nothing of them is logged, stored in Redis or written to disk: the bytes live
  in this turn's memory and are gone with it.
- Anything else (video, documents, unknown types, too large, not fetchable) gets a clear note in
  the reply; the message's text is still answered.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import openai
from wacoder.botconfig import BotConfigSource
from wacoder.settings import MissingSecret, Settings
from wacoder.v1 import agent_pb2

log = logging.getLogger("agent.media")

MB = 1_000_000
# Twilio's limits for WhatsApp media: images 5 MB, audio (and video, documents) 16 MB.
MAX_IMAGE_BYTES = 5 * MB
MAX_AUDIO_BYTES = 16 * MB
# What AutoCoder takes as a design reference, all images together (ADR 0002): the call crosses
# gRPC (4 MiB per message by default) as base64, which is 4/3 of this.
MAX_REFERENCE_BYTES = 2 * 1024 * 1024
MAX_REFERENCE_IMAGES = 3
# A transcript is handled like a typed message, which Twilio caps at 1,600 characters.
MAX_TRANSCRIPT_CHARS = 1600
FETCH_TIMEOUT_S = 15.0
MAX_REDIRECTS = 3

# Types the LLM (OpenAI vision) and WhatsApp both know, with the bytes each file starts with.
IMAGE_TYPES: dict[str, tuple[bytes, ...]] = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/webp": (b"RIFF",),
}
# Voice notes (WhatsApp's are audio/ogg with Opus) and the file name the transcription endpoint
# reads the format from.
AUDIO_TYPES: dict[str, str] = {
    "audio/ogg": "voice.ogg",
    "audio/opus": "voice.ogg",
    "audio/mpeg": "voice.mp3",
    "audio/mp3": "voice.mp3",
    "audio/mp4": "voice.m4a",
    "audio/m4a": "voice.m4a",
    "audio/x-m4a": "voice.m4a",
    "audio/wav": "voice.wav",
    "audio/x-wav": "voice.wav",
    "audio/webm": "voice.webm",
}

# What WhatsApp users send as documents (told apart from files of unknown kind).
DOCUMENT_TYPES = frozenset(
    {"application/pdf", "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"}
)

VOICE_NEEDS_LLM = (
    "🎤 I can't listen to voice notes here: voice needs an LLM, and this bot has none configured. "
    "Please type your message instead."
)
IMAGE_ALONE_OFFLINE = (
    "🖼️ Got your image. I can build from it: send it again with a caption saying what to build, "
    "e.g. _make a landing page like this_, and AutoCoder's UI/UX agent will use it as a design reference."
)
IMAGE_UNUSED_OFFLINE = (
    "🖼️ I use images as a design reference for a coding task: send one with a caption such as "
    "_build a page like this_."
)
IMAGE_PASSED_ON = "🖼️ Your image went to the UI/UX agent as a design reference."
SUPPORTED = "I can use images (JPEG, PNG, WebP, up to 5 MB) and voice notes (up to 16 MB)."


class MediaRefused(Exception):
    """This medium cannot be used; the message is what the user is told."""


@dataclass(frozen=True)
class Image:
    content_type: str
    data: bytes

    def data_url(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode()}"

    def as_reference(self) -> dict[str, str]:
        """One item of execute_coding_task's `design_reference` (ADR 0002)."""
        return {"content_type": self.content_type, "data": base64.b64encode(self.data).decode()}


@dataclass
class MediaInput:
    """A message as the turn handles it: its text (a voice note's transcript included), its
    images, and what the user is told about the media that could not be used."""

    text: str
    images: list[Image] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def remembered(self) -> str:
        """What the conversation's history keeps of the message (encrypted, as all of it)."""
        marks = ["[image]"] * len(self.images) + ["[voice note]"] * bool(self.heard)
        return " ".join([*marks, self.text]).strip()


def design_reference(images: list[Image]) -> list[dict[str, str]]:
    """The images AutoCoder takes as a design reference: in order, within its bounds."""
    chosen, total = [], 0
    for image in images[:MAX_REFERENCE_IMAGES]:
        if total + len(image.data) > MAX_REFERENCE_BYTES:
            break
        total += len(image.data)
        chosen.append(image.as_reference())
    return chosen


def base_type(content_type: str) -> str:
    """`audio/ogg; codecs=opus` -> `audio/ogg`."""
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(content_type: str) -> str:
    """image, audio, or unsupported (with what to call it in the reply)."""
    ctype = base_type(content_type)
    if ctype in IMAGE_TYPES:
        return "image"
    if ctype in AUDIO_TYPES:
        return "audio"
    return "unsupported"


def describe(content_type: str) -> str:
    ctype = base_type(content_type)
    family = ctype.partition("/")[0]
    if family == "video":
        return "videos"
    if family == "image":
        return f"{ctype.partition('/')[2].upper() or 'these'} images"
    if family == "audio":
        return f"{ctype.partition('/')[2].upper() or 'this'} audio"
    if family == "text" or ctype in DOCUMENT_TYPES or "officedocument" in ctype:
        return "documents"
    return "this kind of file"


def unsupported_note(content_type: str) -> str:
    return f"📎 I can't use {describe(content_type)}. {SUPPORTED}"


def megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB"


def looks_like(content_type: str, data: bytes) -> bool:
    """Whether an image's first bytes are what its type says (WebP: RIFF....WEBP)."""
    ctype = base_type(content_type)
    if ctype == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return any(data.startswith(magic) for magic in IMAGE_TYPES.get(ctype, ()))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class MediaReader:
    """Turns an inbound message's media into a MediaInput. One per agent process."""

    def __init__(
        self, settings: Settings, config: BotConfigSource, http: httpx.AsyncClient | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.llm = settings.openai_api_key is not None
        self.twilio_origin = _origin(settings.twilio_api_base_url)
        base_path = urlsplit(settings.twilio_api_base_url).path.rstrip("/")
        # Only our own account's media: the credentials are the account's.
        self.media_prefix = f"{base_path}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages/"
        # Redirects are followed by hand, to drop the credentials when they leave Twilio's API.
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def read(self, message: agent_pb2.InboundMessage) -> MediaInput:
        media = MediaInput(text=message.body)
        for medium in message.media:
            kind = kind_of(medium.content_type)
            try:
                if kind == "unsupported":
                    raise MediaRefused(unsupported_note(medium.content_type))
                if kind == "audio" and not self.llm:
                    raise MediaRefused(VOICE_NEEDS_LLM)
                limit = MAX_IMAGE_BYTES if kind == "image" else MAX_AUDIO_BYTES
                data = await self.fetch(medium.url, medium.content_type, limit)
                if kind == "image":
                    media.images.append(Image(base_type(medium.content_type), data))
                else:
                    media.heard.append(await self.transcribe(medium.content_type, data))
                outcome = kind
            except MediaRefused as refused:
                outcome = "refused"
                if str(refused) not in media.notes:
                    media.notes.append(str(refused))
            # The kind and outcome only: never the URL (it names the account) nor the content.
            log.info(
                "medium read", extra={"content_type": base_type(medium.content_type), "outcome": outcome}
            )
        if media.heard:
            media.text = "\n".join([*media.heard, media.text]).strip()
        return media

    def _may_have_credentials(self, url: str) -> bool:
        return _origin(url) == self.twilio_origin and urlsplit(url).path.startswith(self.media_prefix)

    async def fetch(self, url: str, content_type: str, limit: int) -> bytes:
        """The medium's bytes, from Twilio only, at most `limit` of them. Raises MediaRefused."""
        if not self._may_have_credentials(url):
            # Not Twilio's: whoever made the message up may be fishing for our credentials, or
            # pointing us at an internal address (SSRF). Neither is worth a fetch.
            log.warning("medium refused", extra={"reason": "not_twilio_host"})
            raise MediaRefused(
                "📎 I couldn't fetch your attachment: it isn't hosted by Twilio, so I left it out."
            )
        try:
            token = self.settings.secret("twilio_auth_token")
        except MissingSecret:
            log.warning("medium refused", extra={"reason": "no_twilio_token"})
            raise MediaRefused("📎 I can't fetch attachments: this bot has no Twilio credentials.") from None
        auth: httpx.Auth | None = httpx.BasicAuth(self.settings.twilio_account_sid, token)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                request = self.http.build_request("GET", url)
                response = await self.http.send(request, auth=auth or httpx.USE_CLIENT_DEFAULT, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        if urlsplit(url).scheme not in ("http", "https"):
                            break
                        # Twilio hands media out from its CDN through a signed URL: no credentials there.
                        auth = auth if self._may_have_credentials(url) else None
                        continue
                    return await self._body(response, content_type, limit)
                finally:
                    await response.aclose()
        except httpx.HTTPError as error:
            log.warning("medium fetch failed", extra={"error": type(error).__name__})
            raise MediaRefused(
                "📎 I couldn't fetch your attachment from Twilio just now, so I left it out."
            ) from None
        raise MediaRefused("📎 I couldn't fetch your attachment from Twilio just now, so I left it out.")

    async def _body(self, response: httpx.Response, content_type: str, limit: int) -> bytes:
        what = "image" if kind_of(content_type) == "image" else "voice note"
        if response.status_code != 200:
            log.warning("medium fetch failed", extra={"status": response.status_code})
            raise MediaRefused(f"📎 I couldn't fetch your {what} from Twilio, so I left it out.")
        too_large = (
            f"📎 That {what} is too large ({{size}}); I take images up to {megabytes(MAX_IMAGE_BYTES)} "
            f"and voice notes up to {megabytes(MAX_AUDIO_BYTES)}."
        )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise MediaRefused(too_large.format(size=megabytes(int(length))))
        served = base_type(response.headers.get("content-type", ""))
        if served and served.partition("/")[0] != base_type(content_type).partition("/")[0]:
            raise MediaRefused(unsupported_note(served))
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > limit:
                raise MediaRefused(too_large.format(size=f"over {megabytes(limit)}"))
        if what == "image" and not looks_like(content_type, bytes(data)):
            raise MediaRefused(
                f"📎 Your image isn't a valid {describe(content_type)[:-1]}, so I left it out."
            )
        return bytes(data)

    async def transcribe(self, content_type: str, data: bytes) -> str:
        """What the voice note says, through the OpenAI-compatible transcription endpoint."""
        assert self.settings.openai_api_key is not None
        client = openai.AsyncOpenAI(
            api_key=self.settings.openai_api_key.get_secret_value(),
            base_url=self.config.current.model_base_url,
            timeout=self.settings.llm_timeout_s,
            max_retries=1,
        )
        name = AUDIO_TYPES[base_type(content_type)]
        try:
            result: Any = await client.audio.transcriptions.create(
                model=self.settings.transcription_model, file=(name, data, base_type(content_type))
            )
        except (openai.APIError, httpx.HTTPError) as error:
            log.warning("transcription failed", extra={"error": type(error).__name__})
            raise MediaRefused(
                "🎤 I couldn't transcribe your voice note just now. Please try again, or type it."
            ) from None
        finally:
            await client.close()
        text = " ".join(str(getattr(result, "text", "") or "").split())[:MAX_TRANSCRIPT_CHARS]
        if not text:
            raise MediaRefused(
                "🎤 I couldn't make out any words in your voice note. Please try again, or type it."
            )
        return text


def compose(media: MediaInput, answer: str | None, *, llm: bool, passed_on: bool) -> str:
    """The reply: what was heard (quoted), the answer, then notes on the media."""
    parts = [f"🎤 “{heard}”" for heard in media.heard]
    if answer:
        parts.append(answer)
    parts += media.notes
    if media.images and not llm:
        if passed_on:
            parts.append(IMAGE_PASSED_ON)
        elif answer:
            parts.append(IMAGE_UNUSED_OFFLINE)
        else:
            parts.append(IMAGE_ALONE_OFFLINE)
    elif media.images and passed_on:
        parts.append(IMAGE_PASSED_ON)
    return "\n\n".join(parts) if parts else SUPPORTED
