"""The service images (services/<name>/Dockerfile): what Kubernetes and the chart rely on,
read from the parsed Dockerfiles, and their install step replayed on this machine.

No Docker engine runs here, so the replay is the next best thing to a build: the builder
stage's COPY instructions (filtered by .dockerignore, as the build context is) and its
`uv sync` commands, with the arguments and environment the Dockerfile gives them, into a
temporary directory (this machine's uv and Python 3.11 stand in for the pinned uv image and
the base image's interpreter; uv's cache is warm from `make install`, so it runs offline).
Then everything but what the runtime stage copies (the venv) is deleted, and the venv must
import the service's `main` and nothing of the other services, nor the dev tools.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from wacoder.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["webhook", "agent", "mcp-bridge", "notifier", "autocoder"]
# Modules that must not be importable from another service's image.
OTHER_MODULES = ["webhook", "agent", "mcp_bridge", "notifier", "autocoder", "devtools"]


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def expected_ports(service: str) -> set[int]:
    """The ports the service listens on by default: the code's Settings are the truth."""
    d = {name: f.default for name, f in Settings.model_fields.items()}
    return {
        "webhook": {d["webhook_port"]},  # webhooks, /livez, /readyz, /metrics on one port
        "agent": {_port(d["agent_addr"]), d["agent_metrics_port"]},
        "mcp-bridge": {_port(d["mcp_bridge_addr"]), d["mcp_bridge_metrics_port"]},
        "notifier": {_port(d["notifier_addr"]), d["notifier_metrics_port"]},
        "autocoder": {d["autocoder_port"], d["autocoder_metrics_port"]},
    }[service]


def pyproject(service: str) -> dict:
    return tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())


def distribution(service: str) -> str:
    return pyproject(service)["project"]["name"]


def module(service: str) -> str:
    (package,) = pyproject(service)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return package


# --- the parsed Dockerfile, as stages ------------------------------------------------------------


@dataclass
class Instruction:
    name: str
    flags: dict[str, str]  # --from=..., --mount=... (the last of a name wins; we read --from only)
    args: str  # the rest of the value

    @property
    def json(self) -> list[str] | None:
        """The exec (JSON) form's argv, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str  # the image, ARGs substituted (or the name of an earlier stage)
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env.update(parse_env(instruction.args))
        return env


_FLAG = re.compile(r"^--([a-z-]+)=(\S*)\s*")


def _split_flags(value: str) -> tuple[dict[str, str], str]:
    flags = {}
    while m := _FLAG.match(value):
        flags[m.group(1)] = m.group(2)
        value = value[m.end() :]
    return flags, value.strip()


def parse_env(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # the legacy `ENV KEY value` form
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


@dataclass
class Dockerfile:
    path: Path
    parser: DockerfileParser
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (stage,) = [s for s in self.stages if s.alias == name]
        return stage

    @property
    def aliases(self) -> set[str]:
        return {s.alias for s in self.stages if s.alias}


def load(service: str) -> Dockerfile:
    path = ROOT / "services" / service / "Dockerfile"
    parser = DockerfileParser(str(path), cache_content=True)
    # parent_images: one per FROM, in order, with the ARGs before the first FROM substituted.
    bases = iter(parser.parent_images)
    stages: list[Stage] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(next(bases), alias))
        elif stages:
            flags, args = _split_flags(item["value"])
            stages[-1].instructions.append(Instruction(item["instruction"], flags, args))
    return Dockerfile(path, parser, stages)


# --- what the Dockerfile says -----------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_parses_as_a_multi_stage_build_on_one_python_base(service: str) -> None:
    dockerfile = load(service)
    assert dockerfile.parser.structure, f"{dockerfile.path} is empty"
    builder = copied_from_stage(dockerfile)
    assert len(dockerfile.stages) >= 2 and builder is not dockerfile.final, "not multi-stage"
    # The venv's bin/python is a symlink to the base's interpreter: the same base in both stages.
    assert builder.base == dockerfile.final.base
    assert re.fullmatch(r"python:3\.11[.\d]*-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", dockerfile.final.base), (
        f"runtime base {dockerfile.final.base!r} is not a slim Python 3.11 image"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_base_images_are_pinned(service: str) -> None:
    dockerfile = load(service)
    for stage in dockerfile.stages:
        if stage.base in dockerfile.aliases:
            continue  # an earlier stage of this file
        image, _, digest = stage.base.partition("@")
        tag = image.rpartition("/")[2].partition(":")[2]
        assert digest.startswith("sha256:") or (tag and tag != "latest" and re.search(r"\d", tag)), (
            f"{stage.base!r} is not pinned to a version (or a digest)"
        )


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_a_numeric_non_root_user(service: str) -> None:
    users = load(service).final.all("USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    user, _, group = users[-1].args.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, f"USER {users[-1].args}"
    assert not group or (group.isdigit() and int(group) != 0), f"USER {users[-1].args}"


@pytest.mark.parametrize("service", SERVICES)
def test_exposes_the_service_ports(service: str) -> None:
    final = load(service).final
    exposed = {int(p.partition("/")[0]) for i in final.all("EXPOSE") for p in i.args.split()}
    assert exposed == expected_ports(service)
    # The HEALTHCHECK (Docker's; Kubernetes has its own probes) asks a port the service serves.
    for healthcheck in final.all("HEALTHCHECK"):
        assert {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)/", healthcheck.args)} <= exposed


@pytest.mark.parametrize("service", SERVICES)
def test_command_runs_the_service_main(service: str) -> None:
    final = load(service).final
    assert not final.all("ENTRYPOINT")
    cmds = final.all("CMD")
    assert cmds and cmds[-1].json == ["python", "-m", f"{module(service)}.main"], (
        "CMD must be the exec form (python is PID 1 and gets SIGTERM) of `python -m <module>.main`"
    )
    main = ROOT / "services" / service / module(service) / "main.py"
    assert 'if __name__ == "__main__":' in main.read_text(), f"{main} does nothing under -m"


@pytest.mark.parametrize("service", SERVICES)
def test_runtime_holds_only_the_venv_and_suits_a_read_only_root(service: str) -> None:
    dockerfile = load(service)
    final, builder = dockerfile.final, copied_from_stage(dockerfile)
    venv = builder.env()["UV_PROJECT_ENVIRONMENT"]
    copies = final.all("COPY") + final.all("ADD")
    assert [(c.flags.get("from"), c.args.split()) for c in copies] == [(builder.alias, [venv, venv])], (
        "the runtime stage should copy the builder's venv, to the same path, and nothing else"
    )
    env = final.env()
    assert env["PATH"].split(":")[0] == f"{venv}/bin", "`python` must be the venv's"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME") == "/tmp"
    assert env.get("WACODER_ENV", "production") == "production"
    volumes = [v for i in final.all("VOLUME") for v in (i.json or i.args.split())]
    assert "/tmp" in volumes


def copied_from_stage(dockerfile: Dockerfile) -> Stage:
    """The stage the runtime stage copies its venv from (the builder)."""
    sources = {c.flags["from"] for c in dockerfile.final.all("COPY") if "from" in c.flags}
    assert len(sources) == 1, f"the runtime stage copies from {sources or 'no stage'}"
    return dockerfile.stage(sources.pop())


# --- the install step, replayed -----------------------------------------------------------------


def dockerignore() -> Callable[[str], bool]:
    """Whether .dockerignore keeps a path (relative, posix) out of the build context, with
    Docker's rules (moby/patternmatcher): patterns are rooted at the context, `*` and `?` stop at
    `/`, `**` spans directories, a pattern that matches a parent directory matches its contents,
    and the last matching pattern wins (`!` re-includes)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                i += 2 + pattern.startswith("/", i + 2)
                regex += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            char = pattern[i]
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end
            else:
                regex += re.escape(char)
            i += 1
        patterns.append((negated, re.compile(regex)))

    def excluded(path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negated, regex in patterns:
            if any(regex.fullmatch(c) for c in candidates):
                result = not negated
        return result

    return excluded


def replay_copy(instruction: Instruction, root: Path, workdir: str, excluded: Callable[[str], bool]) -> None:
    """`COPY <src>... <dest>` from the build context (the repository, through .dockerignore)
    into `root`, which stands for the stage's filesystem."""
    *sources, dest = shlex.split(instruction.args)
    target = root / posixpath.join(workdir, dest).lstrip("/")
    for source in sources:
        assert not re.search(r"[*?\[]", source), f"the replay does not expand globs: COPY {source}"
        rel = posixpath.normpath(source)
        path = ROOT / rel
        if path.is_dir():  # Docker copies a directory's contents
            files = [(p, p.relative_to(path)) for p in sorted(path.rglob("*")) if p.is_file()]
            files = [(p, r) for p, r in files if not excluded(p.relative_to(ROOT).as_posix())]
            assert files, f"COPY {source}: nothing left of it in the build context"
            for file, relative in files:
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target / relative)
        else:
            assert path.is_file() and not excluded(rel), f"COPY {source}: not in the build context"
            into = target / path.name if dest.endswith("/") or len(sources) > 1 else target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, into)


def uv_command() -> list[str]:
    uv = shutil.which("uv")
    return [uv] if uv else [sys.executable, "-m", "uv"]


def uv_sync_args(instruction: Instruction) -> list[str] | None:
    """The arguments of a RUN that is one `uv sync` (None for any other RUN)."""
    argv = shlex.split(instruction.args)
    if argv[:2] != ["uv", "sync"]:
        return None
    assert not set(argv) & {"&&", "||", ";", "|"}, "keep `uv sync` alone in its RUN (the test replays it)"
    return argv[2:]


@dataclass
class Replay:
    service: str
    syncs: list[list[str]]  # the arguments of each `uv sync`, as run
    venv: Path
    report: dict  # what the venv's python says about itself


# Run by the venv's python, isolated (-I: no PYTHONPATH, no cwd, no user site), in an empty dir.
_INSPECT = """
import importlib, importlib.metadata, json, sys
module, others = sys.argv[1], sys.argv[2:]
main = importlib.import_module(module + ".main")
importable = []
for name in others:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    importable.append(name)
print(json.dumps({
    "main": main.__file__, "prefix": sys.prefix, "importable": importable,
    "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
}))
"""


def replay_install(service: str, root: Path) -> Replay:
    dockerfile = load(service)
    builder = copied_from_stage(dockerfile)
    excluded = dockerignore()
    # This machine's environment minus anything uv or Python would take from it; then the
    # stage's ENV, with its paths under `root` and this machine's Python 3.11 for the base's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "PYTHON"))}
    workdir = "/"
    syncs: list[list[str]] = []
    for instruction in builder.instructions:
        if instruction.name == "ENV":
            env.update(parse_env(instruction.args))
        elif instruction.name == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        elif instruction.name in ("COPY", "ADD") and "from" not in instruction.flags:
            replay_copy(instruction, root, workdir, excluded)
        elif instruction.name == "RUN" and (args := uv_sync_args(instruction)) is not None:
            venv_path = env["UV_PROJECT_ENVIRONMENT"]
            run_env = {
                **env,
                "UV_PROJECT_ENVIRONMENT": str(root / venv_path.lstrip("/")),
                "UV_PYTHON": getattr(sys, "_base_executable", sys.executable),
                # How files are installed, not which: byte-compiling and copying out of the
                # cache cost seconds per environment (uv copies anyway across filesystems).
                "UV_COMPILE_BYTECODE": "0",
                "UV_LINK_MODE": "hardlink",
            }
            cwd = root / workdir.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
            # Offline first (the cache is warm after `make install`), else with the network.
            for offline in ("1", "0"):
                done = subprocess.run(
                    [*uv_command(), "sync", *args],
                    cwd=cwd,
                    env={**run_env, "UV_OFFLINE": offline},
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if done.returncode == 0:
                    break
            assert done.returncode == 0, f"uv sync {shlex.join(args)} failed:\n{done.stderr}"
            syncs.append(args)
    assert syncs, "the builder stage runs no `uv sync`"

    # The runtime stage: only what it copies from the builder survives.
    (copy,) = [c for c in dockerfile.final.all("COPY") if c.flags.get("from") == builder.alias]
    kept = root / shlex.split(copy.args)[0].lstrip("/")
    _prune(root, kept)
    venv = kept
    scratch = root / "empty"
    scratch.mkdir()
    others = [m for m in OTHER_MODULES if m != module(service)]
    inspected = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-B", "-c", _INSPECT, module(service), *others],
        cwd=scratch,
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(scratch)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inspected.returncode == 0, f"import {module(service)}.main failed in the venv:\n{inspected.stderr}"
    return Replay(service, syncs, venv, json.loads(inspected.stdout))


def _prune(root: Path, keep: Path) -> None:
    """Deletes everything under `root` except `keep` (and the directories leading to it)."""
    for entry in root.iterdir():
        if entry == keep:
            continue
        if keep.is_relative_to(entry):
            _prune(entry, keep)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_closure(dist: str) -> set[str]:
    """Every package uv.lock can install for `dist` (on any platform: a superset of one)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages: dict[str, list[dict]] = {}
    for package in lock["package"]:
        packages.setdefault(_normalize(package["name"]), []).append(package)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(_normalize(dist), ())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for package in packages[name]:
            deps = list(package.get("dependencies", []))
            for extra in extras:
                deps += package.get("optional-dependencies", {}).get(extra, [])
            todo += [(_normalize(dep["name"]), tuple(dep.get("extra", ()))) for dep in deps]
    return {name for name, _ in seen}


def dev_tools() -> set[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        _normalize(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in root["dependency-groups"]["dev"]
    }


@pytest.fixture(scope="module", params=SERVICES)
def replayed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    service = request.param
    return replay_install(service, tmp_path_factory.mktemp(f"image-{service}"))


def test_install_step_is_the_locked_service_alone(replayed: Replay) -> None:
    *_, last = replayed.syncs
    flags = set(last)
    assert {"--no-dev", "--no-editable"} <= flags and flags & {"--frozen", "--locked"}, shlex.join(last)
    assert "--package" in last and last[last.index("--package") + 1] == distribution(replayed.service)
    assert not flags & {"--all-packages", "--no-install-project", "--no-install-workspace"}, (
        "the last sync must install the service itself"
    )
    assert all("--frozen" in args or "--locked" in args for args in replayed.syncs), (
        "every sync from the lock"
    )
    version = subprocess.run([*uv_command(), "--version"], capture_output=True, text=True).stdout.split()
    pinned = {s.base for s in load(replayed.service).stages if "astral-sh/uv" in s.base}
    if version and pinned and not any(b.endswith(f":{version[1]}") for b in pinned):
        warnings.warn(f"replayed with uv {version[1]}, the image pins {pinned}", stacklevel=1)


def test_install_step_imports_the_service_main_from_the_venv(replayed: Replay) -> None:
    # Installed, not linked to the source tree (deleted by now): the runtime copies the venv only.
    assert Path(replayed.report["main"]).is_relative_to(replayed.report["prefix"])
    assert Path(replayed.report["prefix"]) == replayed.venv


def test_install_step_holds_nothing_of_the_other_services(replayed: Replay) -> None:
    assert replayed.report["importable"] == []
    installed = {_normalize(d) for d in replayed.report["distributions"]}
    others = {distribution(s) for s in SERVICES if s != replayed.service} | {"wacoder-devtools"}
    assert not installed & {_normalize(o) for o in others}
    assert installed <= lock_closure(distribution(replayed.service)), "installed beyond the lock's closure"


def test_install_step_holds_no_dev_tools(replayed: Replay) -> None:
    # The AutoCoder needs pytest at runtime (its tester agent runs generated tests with it).
    unwanted = dev_tools() - lock_closure(distribution(replayed.service))
    installed = {_normalize(d) for d in replayed.report["distributions"]}
    assert not installed & unwanted, f"dev tools in the image: {sorted(installed & unwanted)}"
    if replayed.service != "autocoder":
        assert "pytest" not in installed


# --- make images, without a Docker engine ----------------------------------------------------
#
# `make images` builds every service's image where a Docker engine runs. None runs here, so a
# stand-in `docker` on PATH records how it is called (argv, working directory, DOCKER_BUILDKIT)
# and answers `info` as told: the exact build commands, and the refusals without an engine.

FAKE_DOCKER = """#!{python}
import json, os, sys
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                          "buildkit": os.environ.get("DOCKER_BUILDKIT")}}) + "\\n")
if sys.argv[1:2] == ["info"]:
    sys.exit(0 if os.environ.get("FAKE_DOCKER_INFO") == "ok" else 1)
fail = os.environ.get("FAKE_DOCKER_FAIL")
if sys.argv[1:2] == ["build"] and fail and fail in " ".join(sys.argv):
    sys.exit(1)
"""


@dataclass
class FakeDocker:
    bin_dir: Path
    log: Path

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_docker(tmp_path: Path) -> FakeDocker:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker-calls.jsonl"
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return FakeDocker(bin_dir, log)


def make_images(*args: str, path_first: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`make images ...` in the repository, as a developer runs it (no outer make's flags)."""
    base = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DOCKER"}}
    if path_first is not None:
        base["PATH"] = f"{path_first}{os.pathsep}{base['PATH']}"
    return subprocess.run(
        ["make", "--no-print-directory", "images", *args],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def expected_build(service: str, tag: str, prefix: str) -> list[str]:
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return [
        "build",
        "--file",
        f"services/{service}/Dockerfile",
        "--tag",
        f"{prefix}/{service}:{tag}",
        "--build-arg",
        f"VERSION={tag}",
        "--build-arg",
        f"REVISION={revision.stdout.strip() or 'unknown'}",
        ".",  # the context: the repository root (make runs there)
    ]


def test_make_n_images_prints_one_build_per_service_from_the_repository_root() -> None:
    result = make_images("-n", "IMAGE_TAG=t", "IMAGE_PREFIX=p")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(c) for c in result.stdout.replace("\\\n", " ").splitlines() if c.strip()]
    builds = [c for c in commands if c[:3] == ["DOCKER_BUILDKIT=1", "docker", "build"]]
    assert [c[2:] for c in builds] == [expected_build(s, "t", "p") for s in SERVICES]
    # The engine is checked before anything is built.
    first_build = commands.index(builds[0])
    assert any(c[:2] == ["docker", "info"] for c in commands[:first_build]), result.stdout
    for service in SERVICES:
        assert (ROOT / "services" / service / "Dockerfile").is_file()


def test_make_images_builds_each_image_with_the_exact_command(fake_docker: FakeDocker) -> None:
    result = make_images(
        "IMAGE_TAG=1.2.3",
        "IMAGE_PREFIX=registry.example.org/wac",
        path_first=fake_docker.bin_dir,
        FAKE_DOCKER_INFO="ok",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = fake_docker.calls()
    assert calls[0]["argv"] == ["info"]
    builds = calls[1:]
    assert [c["argv"] for c in builds] == [
        expected_build(s, "1.2.3", "registry.example.org/wac") for s in SERVICES
    ]
    assert all(c["cwd"] == str(ROOT) and c["buildkit"] == "1" for c in builds)


def test_make_images_stops_at_the_first_failed_build(fake_docker: FakeDocker) -> None:
    result = make_images(
        path_first=fake_docker.bin_dir, FAKE_DOCKER_INFO="ok", FAKE_DOCKER_FAIL="services/agent/"
    )
    assert result.returncode != 0
    built = [c["argv"][2] for c in fake_docker.calls() if c["argv"][0] == "build"]
    assert built == ["services/webhook/Dockerfile", "services/agent/Dockerfile"]


def test_make_images_without_a_docker_command_says_so(fake_docker: FakeDocker) -> None:
    result = make_images("DOCKER=/nonexistent/docker", path_first=fake_docker.bin_dir, FAKE_DOCKER_INFO="ok")
    assert result.returncode != 0
    assert "images: no '/nonexistent/docker' command: install Docker (or set DOCKER=)" in result.stderr
    assert fake_docker.calls() == []  # the docker on PATH is not used instead


def test_make_images_without_a_docker_engine_says_so(fake_docker: FakeDocker) -> None:
    result = make_images(
        path_first=fake_docker.bin_dir, FAKE_DOCKER_INFO="fail", DOCKER_HOST="tcp://nowhere:2375"
    )
    assert result.returncode != 0
    assert (
        "images: no Docker engine reachable ('docker info' failed; DOCKER_HOST=tcp://nowhere:2375)"
        in result.stderr
    )
    assert "the images can only be built where one runs" in result.stderr
    assert [c["argv"] for c in fake_docker.calls()] == [["info"]]  # nothing built
