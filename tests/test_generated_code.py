"""gen/ must be exactly what `make gen` writes from protos/ (it is never edited by hand)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _differences(left: Path, right: Path) -> list[str]:
    found: list[str] = []
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found += [f"only in regenerated: {n}" for n in comparison.left_only]
    found += [f"only in gen/: {n}" for n in comparison.right_only]
    found += [f"differs: {n}" for n in comparison.diff_files]
    for name in comparison.common_dirs:
        found += _differences(left / name, right / name)
    return found


def test_gen_is_fresh(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protos").rglob("*.proto"))
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--plugin=protoc-gen-mypy_grpc={plugin}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    stale = _differences(tmp_path / "keel", ROOT / "gen" / "keel")
    assert not stale, "gen/ is stale; run `make gen` and commit:\n" + "\n".join(stale)


def test_every_api_has_a_proto() -> None:
    services = {
        p.parent.parent.name
        for p in (ROOT / "protos" / "keel").rglob("*.proto")
        if "\nservice " in p.read_text()
    }
    assert services == {"tenants", "channels", "events", "notifications", "files"}
