"""`make bench BENCH_ARGS=--profile`: where each service spends its CPU during the ack burst.

py-spy (in the dev dependencies) samples each Python service while the burst is sent and
answered, without pausing it (--nonblocking); only threads running Python count (no --idle),
so the samples follow CPU time. The raw stacks are kept in .run/bench/profiles/<service>.txt
(collapsed, for flamegraph.pl or speedscope); the summary names, per service, the frames that
were on the CPU themselves (self), the packages they are in, and the project's own functions
that were on the stack (inclusive), and the deepest of them per sample (our function whose work,
the library calls it made included, was on the CPU).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RATE_HZ = 200
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
OWN_CODE = ("/services/", "/lib/wacoder/", "/devtools/")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy record on each of `pids` until `stop`."""

    def __init__(self, pids: Mapping[str, int], out_dir: Path) -> None:
        self.pids = dict(pids)
        self.out_dir = out_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.binary = py_spy()

    def start(self) -> None:
        if self.binary is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            self.procs[name] = subprocess.Popen(
                [
                    self.binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE_HZ),
                    "--nonblocking",
                    "--full-filenames",
                    "--format",
                    "raw",
                    "--output",
                    str(self.out_dir / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> dict[str, Any]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.binary is None:
            return {"error": "py-spy not found (it is in the dev dependencies: make install)"}
        found: dict[str, Any] = {}
        for name in self.procs:
            path = self.out_dir / f"{name}.txt"
            found[name] = summarize(path) if path.exists() else {"error": "py-spy wrote nothing"}
        return found


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match["func"], match["file"]


def package_of(path: str) -> str:
    """Where a frame's file belongs: a site-packages distribution, our own folder, or the
    standard library's module."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for marker in OWN_CODE:
        if marker in path:
            rest = path.split(marker, 1)[1].split("/")
            return f"{marker.strip('/')}/{rest[0]}" if marker == "/services/" else marker.strip("/")
    match = re.search(r"/python3\.\d+/(?P<module>[^/]+)", path)
    if match:
        return "stdlib:" + match["module"].removesuffix(".py")
    return path or "?"


def summarize(path: Path, top: int = 8) -> dict[str, Any]:
    selfs: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    deepest: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        # py-spy's raw format: the thread first ("process 123:..." / "thread (0x...)"), leaf last.
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        selfs[f"{func} ({_short(file)})"] += count
        packages[package_of(file)] += count
        mine = [f"{f} ({_short(p)})" for f, p in frames if any(m in p for m in OWN_CODE)]
        for name in set(mine):
            own[name] += count
        # The deepest of our own frames: our function whose work (its library calls included)
        # was on the CPU; "outside our code" when only the entry point is ours.
        deepest[
            mine[-1] if len(mine) > 2 else "(event loop: callbacks and I/O, no frame of ours on the stack)"
        ] += count

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)} if total else {}

    # Frames on (nearly) every stack, the entry point's, say nothing: left out.
    own = Counter({k: v for k, v in own.items() if v < 0.7 * total})
    return {
        "samples": total,
        "self_percent": share(selfs),
        "package_percent": share(packages),
        "own_code_deepest_percent": share(deepest),
        "own_code_inclusive_percent": share(own),
        "raw": str(path),
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", *OWN_CODE):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if "/python3." in path else path
