"""Design references: images a coding task may carry for the UI/UX agent (ADR 0002).

`execute_coding_task(design_reference=[{content_type, data}])`: at most MAX_IMAGES images, each
PNG, JPEG or WebP, base64, MAX_TOTAL_BYTES decoded all together (it crosses the bridge's gRPC
hop, 4 MiB per message, as base64). They live in memory for the session's run only: never in the
index, the journal or the project's files; the UI/UX agent notes what it was given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field

MAX_IMAGES = 3
MAX_TOTAL_BYTES = 2 * 1024 * 1024
# base64 of MAX_TOTAL_BYTES: a single item larger than this cannot fit.
_MAX_B64_CHARS = (MAX_TOTAL_BYTES + 2) // 3 * 4

ImageType = Literal["image/png", "image/jpeg", "image/webp"]


class DesignImage(BaseModel):
    """One image of a design reference, as the tool takes it."""

    content_type: ImageType
    data: Annotated[str, Field(min_length=1, max_length=_MAX_B64_CHARS, description="the image, base64")]


DesignReferenceArg = Annotated[
    list[DesignImage] | None,
    Field(
        max_length=MAX_IMAGES,
        description=(
            f"images (a screenshot, a mock-up) the UI/UX agent should follow: at most {MAX_IMAGES}, "
            f"PNG/JPEG/WebP, {MAX_TOTAL_BYTES // 1024 // 1024} MiB decoded in all; "
            "the UI/UX agent joins the team"
        ),
    ),
]


class DesignReferenceError(ValueError):
    pass


@dataclass(frozen=True)
class ReferenceImage:
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> tuple[int, int] | None:
        return image_size(self.content_type, self.data)

    def data_url(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode()}"

    def describe(self) -> str:
        size = self.size
        dims = f", {size[0]}×{size[1]} px" if size else ""
        return f"{self.content_type}, {len(self.data)} bytes{dims}, sha256 {self.sha256}"


_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff", "image/webp": b"RIFF"}


def decode(items: list[DesignImage] | None) -> list[ReferenceImage]:
    """The images, checked: valid base64, the bytes their type says, within the bounds."""
    images: list[ReferenceImage] = []
    for n, item in enumerate(items or [], 1):
        try:
            data = base64.b64decode(item.data, validate=True)
        except (binascii.Error, ValueError):
            raise DesignReferenceError(f"design_reference[{n}]: data is not valid base64") from None
        if not data.startswith(_MAGIC[item.content_type]) or (
            item.content_type == "image/webp" and data[8:12] != b"WEBP"
        ):
            raise DesignReferenceError(f"design_reference[{n}]: not a {item.content_type} image")
        images.append(ReferenceImage(item.content_type, data))
    if sum(len(i.data) for i in images) > MAX_TOTAL_BYTES:
        raise DesignReferenceError(f"design_reference: over {MAX_TOTAL_BYTES} bytes in all")
    return images


def image_size(content_type: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, when it is easy to read (PNG, baseline JPEG)."""
    try:
        if content_type == "image/png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if content_type == "image/jpeg":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
                if marker in (0xC0, 0xC1, 0xC2):
                    height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                    return int(width), int(height)
                i += 2 + length
    except struct.error:
        return None
    return None


def notes(images: list[ReferenceImage]) -> str:
    """The UI notes' section on what the design followed."""
    lines = ["# Design reference", "", "The user sent these images as the design to follow:", ""]
    lines += [f"{n}. {image.describe()}" for n, image in enumerate(images, 1)]
    lines += [
        "",
        "The built-in generator cannot see images: the layout below is its standard dashboard. With "
        "an LLM configured, the UI/UX agent gets the images themselves as input.",
    ]
    return "\n".join(lines) + "\n"
