"""The bubblewrap jail a generated project's tests run in (docs/adr/0005-sandbox.md).

What the jail sees: the system (`/usr` and its links, a few files of `/etc`) and our Python
(interpreter, virtualenv, site-packages) read-only, the project's throwaway copy read-only at
`/autocoder/src`, a writable `/autocoder/out` for pytest's report, and size-limited tmpfs
mounts for `/project` (where the launcher copies the project) and `/tmp`. Nothing else of the
host: not AutoCoder's data directory, its keys or other users' projects, and no network (an
empty network namespace), no other process (a PID namespace that dies with it).

Who runs in it: an unprivileged uid, for real. RLIMIT_NPROC is not enforced for root, and a
user namespace would map the jail's uid back to ours, root (who then owns, and can read, every
root-only file the read-only mounts show). So when we are root, bwrap makes no user namespace
and gives the launcher CAP_SETUID/CAP_SETGID only; the launcher sets the limits and becomes a
uid of its own (one per running jail, from a range no user owns), which drops every
capability; the process limit then counts that jail's processes only, so a fork bomb in one
jail does not stop the tests of another from starting. When we are not root, a user namespace
is the only way in: the jail's uid is `nobody` inside and ours outside, and the process limit
counts the namespace's processes.

The launcher is a few lines of Python run with `-I -S` (no site, nothing from the project):
limits, uid, copy, then `exec` of pytest. No `preexec_fn` (see sandbox.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import site
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The jail's uid when we are root: one per running jail, from a range Debian reserves (no
# user, no file owns one), so the jail writes only where we let it and the process limit counts
# only its own processes.
JAIL_UIDS = range(65000, 65534)
# Inside a user namespace (we are not root): `nobody`, which is us outside.
NOBODY = 65534
PROJECT = "/project"  # the copy the tests run in: a tmpfs, so their writes cost RAM we bound
SRC = "/autocoder/src"  # read-only: the throwaway copy on the host that the launcher copies
OUT = "/autocoder/out"  # writable: pytest's JUnit report comes out here
PINNED_INI = "/autocoder/pytest.ini"
HOME = "/tmp"
# A runaway test competes for the CPU with less weight than the server that must keep serving.
NICE = 10
# The launcher's exit status when it could not start the tests (limits, uid, copy or exec).
LAUNCH_FAILED = 120

# Mounted read-only (or recreated as the same symlink, on merged-/usr systems).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What Python and its libraries read from /etc; no secrets, and not /etc/ssl/private.
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
)


# Written by us instead of shown from the host: the host's users and host names are none of
# the tests' business, but `getpass.getuser()` and `localhost` should work.
def _synthetic_etc(uid: int) -> dict[str, str]:
    return {
        "passwd": (
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{uid}::{HOME}:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{uid}:\n",
        "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    }


_uids_in_use: set[int] = set()


@contextlib.contextmanager
def jail_uid() -> Iterator[int]:
    """A uid for one jail while it runs (when we are root; see the module docstring)."""
    free = [uid for uid in JAIL_UIDS if uid not in _uids_in_use] or list(JAIL_UIDS)
    # Random: another AutoCoder on this machine most likely picks another one.
    uid = random.choice(free)
    _uids_in_use.add(uid)
    try:
        yield uid
    finally:
        _uids_in_use.discard(uid)


LAUNCHER = textwrap.dedent(f"""
    import json, os, resource, shutil, sys
    try:
        spec = json.loads(sys.argv[1])
        for name, (soft, hard) in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if spec["uid"] is not None:
            os.setgroups([])
            os.setgid(spec["uid"])
            os.setuid(spec["uid"])
        if spec["copy"]:  # files and dirs only (copytree would chmod the mount point)
            src, dst = spec["copy"]
            for here, _, names in os.walk(src):
                there = os.path.join(dst, os.path.relpath(here, src))
                os.makedirs(there, exist_ok=True)
                for name in names:
                    shutil.copy(os.path.join(here, name), os.path.join(there, name))
        if spec["chdir"]:
            os.chdir(spec["chdir"])
        os.nice(spec["nice"])
        os.execv(sys.argv[2], sys.argv[2:])
    except Exception as exc:
        print(f"[autocoder] the sandbox could not start the tests: {{exc!r}}", flush=True)
        os._exit({LAUNCH_FAILED})
""")


@dataclass(frozen=True)
class Limits:
    """What one test run may use. Each is per process except where said."""

    timeout_s: float = 60.0  # wall clock of the whole run; then everything is killed
    memory_mb: int = 2048  # address space (RLIMIT_AS)
    max_processes: int = 128  # processes and threads in the jail (RLIMIT_NPROC)
    file_size_mb: int = 64  # largest file a test can write (RLIMIT_FSIZE)
    disk_mb: int = 256  # size of each writable tmpfs (/project, /tmp) in the jail

    @property
    def cpu_s(self) -> int:
        # The wall clock stops the run anyway; this stops one process that burns several cores
        # from costing more than a core for the whole time (RLIMIT_CPU; SIGXCPU, then SIGKILL).
        return max(1, math.ceil(self.timeout_s))

    def rlimits(self, *, nproc: bool) -> dict[str, tuple[int, int]]:
        """The launcher's limits. `nproc` only in the jail: outside it the count is of all the
        server user's processes on the machine, not the tests'."""
        mb = 1024 * 1024
        limits = {
            "RLIMIT_AS": (self.memory_mb * mb, self.memory_mb * mb),
            "RLIMIT_CPU": (self.cpu_s, self.cpu_s + 1),
            "RLIMIT_FSIZE": (self.file_size_mb * mb, self.file_size_mb * mb),
            "RLIMIT_CORE": (0, 0),
        }
        if nproc:
            limits["RLIMIT_NPROC"] = (self.max_processes, self.max_processes)
        return limits


@dataclass(frozen=True)
class Layout:
    """The run's directory on the host (a fresh temp dir, removed after the run), and who the
    jail runs as."""

    root: Path
    uid: int  # inside the jail; on the host too when we are root
    as_root: bool  # we are root: no user namespace, the launcher drops to `uid`

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def ini(self) -> Path:
        return self.root / "pytest.ini"

    @property
    def output(self) -> Path:
        return self.root / "output.txt"

    def etc(self, name: str) -> Path:
        return self.root / "etc" / name


def prepare_layout(layout: Layout) -> None:
    """The out dir the jail may write to and the /etc files we show it (in a thread)."""
    layout.out.mkdir(mode=0o700)
    if layout.as_root:
        # The jail runs as its own uid: this is the one host directory it may write.
        os.chown(layout.out, layout.uid, layout.uid)
    layout.etc("").mkdir()
    for name, content in _synthetic_etc(layout.uid).items():
        layout.etc(name).write_text(content)


def launcher_argv(rlimits: dict[str, tuple[int, int]], *, drop_to: int | None, jailed: bool) -> list[str]:
    """Our interpreter running the launcher, which then execs the argv that follows it."""
    spec = {
        "rlimits": rlimits,
        "uid": drop_to,
        "copy": [SRC, PROJECT] if jailed else None,
        "chdir": PROJECT if jailed else None,
        "nice": NICE,
    }
    # -I -S: starts in milliseconds and reads nothing from the project or the environment.
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(spec)]


def jail_env() -> dict[str, str]:
    """The whole environment inside: none of the server's (its keys and tokens stay out)."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": HOME,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": PROJECT,
        "PYTHONHASHSEED": "0",
        # Generated projects need plain pytest; the server's own plugins (asyncio, hypothesis,
        # timeout) would only slow every run down by a second or more.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def bwrap_argv(
    bwrap: str, layout: Layout, limits: Limits, command: list[str], forbidden: list[Path]
) -> list[str]:
    """The bwrap command line that runs `command`: the launcher (launcher_argv with
    `drop_to=layout.uid` when we are root) and the argv it execs."""
    argv = [bwrap]
    # Every namespace but the user one (see the module docstring); with it when not root.
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if layout.as_root:
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--uid", str(layout.uid), "--gid", str(layout.uid)]
    argv += ["--die-with-parent", "--new-session", "--hostname", "autocoder-sandbox"]
    argv += ["--clearenv"]
    for name, value in jail_env().items():
        argv += ["--setenv", name, value]
    argv += _mounts(layout, limits, forbidden)
    argv += ["--chdir", "/", "--", *command]
    return argv


class _Mounts:
    """bwrap's mount arguments. The directories above a mount point are made 0755 first:
    bwrap would make them 0700 root, and the jail's user could not reach what is below."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._dirs = {Path("/")}

    def add(self, *args: str) -> None:
        """One mount: its options, then its destination last."""
        dest = Path(args[-1])
        for parent in reversed(dest.parents):
            if parent not in self._dirs:
                self.args += ["--perms", "0755", "--dir", str(parent)]
                self._dirs.add(parent)
        self.args += args
        self._dirs.add(dest)


def _mounts(layout: Layout, limits: Limits, forbidden: list[Path]) -> list[str]:
    m = _Mounts()
    # Writable tmpfs first: a read-only mount below may land inside one (a venv under /tmp).
    size = str(limits.disk_mb * 1024 * 1024)
    m.add("--size", size, "--perms", "1777", "--tmpfs", "/tmp")
    m.add("--size", size, "--perms", "1777", "--tmpfs", PROJECT)
    m.add("--proc", "/proc")
    m.add("--dev", "/dev")
    # POSIX semaphores (multiprocessing) live in /dev/shm; no bigger than one file may be.
    m.add("--size", str(limits.file_size_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/dev/shm")
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            m.add("--symlink", os.readlink(path), path)
        elif os.path.isdir(path):
            m.add("--ro-bind", path, path)
    for path in _ETC_FILES:
        m.add("--ro-bind-try", path, path)
    for name in _synthetic_etc(layout.uid):
        m.add("--ro-bind", str(layout.etc(name)), f"/etc/{name}")
    for root in python_roots(forbidden):
        m.add("--ro-bind", str(root), str(root))
    m.add("--ro-bind", str(layout.src), SRC)
    m.add("--bind", str(layout.out), OUT)
    if layout.ini.exists():
        m.add("--ro-bind", str(layout.ini), PINNED_INI)
    return m.args


def python_roots(forbidden: list[Path]) -> list[Path]:
    """The directories our Python needs (interpreter, stdlib, virtualenv, site-packages),
    outermost only, without what /usr already shows, and never one that holds or lies in a
    `forbidden` path (AutoCoder's data dir, the project): those would undo the jail."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    candidates.update(p for p in site.getsitepackages() if p in sys.path)
    user_site = site.getusersitepackages()
    if user_site in sys.path:
        candidates.add(user_site)
    paths: set[Path] = set()
    for candidate in candidates:
        # Both spellings: Python inside uses the path it was started by, mounts resolve links.
        paths.add(Path(os.path.abspath(candidate)))
        paths.add(Path(os.path.realpath(candidate)))
    shown = [Path(d) for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    kept = sorted(
        p
        for p in paths
        if p.is_dir()
        and p != Path("/")
        and not any(p.is_relative_to(d) for d in shown)
        and not any(f.is_relative_to(p) or p.is_relative_to(f) for f in forbidden)
    )
    return [p for i, p in enumerate(kept) if not any(p.is_relative_to(q) for q in kept[:i])]
