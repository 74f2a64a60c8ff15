"""A session's files as one zip, streamed: the archive is written chunk by chunk into the
response, never whole in memory or on disk (zipfile writes data descriptors when its output
cannot seek, so no entry needs to be known in full before it is sent)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

_CHUNK = 64 * 1024


class _Sink:
    """A write-only, unseekable file for zipfile: it collects what is written until taken."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(files: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """The zip of `files` (name in the archive, file on disk) as byte chunks. A sync iterator:
    Starlette runs each step in a thread, so reading and compressing never block the loop. A file
    that vanished since it was listed is left out rather than breaking the download halfway."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, strict_timestamps=False) as archive:
        for name, path in files:
            try:
                source = path.open("rb")
            except OSError:
                continue
            with source:
                info = zipfile.ZipInfo.from_file(path, arcname=name, strict_timestamps=False)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as entry:
                    while chunk := source.read(_CHUNK):
                        entry.write(chunk)
                        if data := sink.take():
                            yield data
            if data := sink.take():
                yield data
    yield sink.take()  # the central directory, written when the archive closes
