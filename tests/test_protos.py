"""The committed gRPC stubs are exactly what `make protos` produces from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "lib" / "wacoder" / "wacoder" / "v1"


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT / "protos" / "..",
        check=True,
    )
    generated = {p.name: p.read_text() for p in (tmp_path / "wacoder" / "v1").iterdir()}
    committed = {p.name: p.read_text() for p in STUBS.iterdir() if p.name != "__init__.py" and p.is_file()}
    assert generated.keys() == committed.keys(), "run `make protos` and commit the result"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: run `make protos` and commit the result"
