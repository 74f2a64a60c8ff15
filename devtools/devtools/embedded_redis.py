"""A Redis for `make run` when REDIS_URL is unset: redis-server from PATH (persisting to
.run/redis, so conversations survive a restart), else fakeredis's TCP server in-process."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

from devtools.stack import free_port, port_open


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.kind = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._fake: object | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.data_dir.resolve()),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
                stdout=subprocess.DEVNULL,
            )
            self.kind = f"redis-server ({binary})"
        else:
            from fakeredis import TcpFakeServer

            server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._fake = server
            self.kind = "fakeredis (in memory; install redis-server to keep data across restarts)"
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise TimeoutError("embedded Redis did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._fake is not None:
            self._fake.shutdown()  # type: ignore[attr-defined]
