"""The Dockerfile and its build context, checked without building the image.

Containers cannot run on Keel's development machines, so the image is checked statically:
hadolint, the instructions of each stage (no build tools in the final one, a non-root
user, a health check, ``keel`` as the entrypoint), the build context that .dockerignore
leaves, and the wheel the builder stage makes from exactly that context.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.compose_file import DOCKERFILE, ROOT

BIN = Path(sys.executable).parent
PACKAGES = (
    "keel_app",
    "service_kit",
    "tenant_service",
    "gateway_bridge",
    "notification_service",
    "file_service",
)
BUILD_TOOLS = ("apt-get", "apt ", "apk ", "gcc", "build-essential", "make ", "pip install")


@dataclass
class Instruction:
    keyword: str
    arguments: str


def stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each a list of instructions (continuations joined, comments
    and the ARGs before the first FROM dropped)."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    found: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            found.append([])
        if found:
            found[-1].append(Instruction(keyword.upper(), arguments))
    return found


def final_stage() -> list[Instruction]:
    return stages()[-1]


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.arguments for i in stage if i.keyword == keyword]


def test_hadolint_finds_nothing() -> None:
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_in_two_stages_on_a_pinned_slim_python() -> None:
    builder, final = stages()
    assert builder[0].arguments.endswith(" AS builder")
    base = next(
        line.split("=", 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("ARG PYTHON_IMAGE=")
    )
    name, _, tag = base.partition(":")
    assert name == "python" and "-slim" in tag and tag[0].isdigit()  # not latest
    assert tuple(int(part) for part in tag.split("-")[0].split(".")[:2]) >= (3, 11)
    assert final[0].arguments == "${PYTHON_IMAGE}"


def test_the_final_stage_has_no_build_tools() -> None:
    final = final_stage()
    for command in arguments(final, "RUN"):
        for tool in BUILD_TOOLS:
            assert tool not in command, command
    # It takes the virtualenv from the builder, nothing from the context but the sources'
    # product: no COPY of the repository.
    assert arguments(final, "COPY") == ["--from=builder /opt/keel /opt/keel"]


def test_the_builder_installs_keel_into_the_virtualenv() -> None:
    runs = arguments(stages()[0], "RUN")
    assert "python -m venv /opt/keel" in runs
    assert "/opt/keel/bin/pip install ./" in runs


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    users = arguments(final_stage(), "USER")
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    assert any(f"--uid {uid}" in run for run in arguments(final_stage(), "RUN"))


def test_keel_is_the_entrypoint_and_serve_all_the_default_command() -> None:
    assert [json.loads(a) for a in arguments(final_stage(), "ENTRYPOINT")] == [["keel"]]
    assert [json.loads(a) for a in arguments(final_stage(), "CMD")] == [["serve", "all"]]


def test_the_health_check_runs_the_keel_health_check_script() -> None:
    (healthcheck,) = arguments(final_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert json.loads(command) == ["python", "/opt/keel/healthcheck.py"]
    assert "--timeout=" in options and "--interval=" in options
    copies = arguments(stages()[0], "COPY")
    assert "deploy/healthcheck.py /opt/keel/healthcheck.py" in copies


def test_every_listening_port_is_exposed_and_the_data_dir_is_a_volume() -> None:
    final = final_stage()
    environment = " ".join(arguments(final, "ENV"))
    exposed = set(" ".join(arguments(final, "EXPOSE")).split())
    for variable in ("KEEL_GRPC_ADDR", "KEEL_WS_ADDR", "KEEL_FILES_HTTP_ADDR", "KEEL_METRICS_ADDR"):
        address = environment.split(f"{variable}=", 1)[1].split()[0]
        host, port = address.rsplit(":", 1)
        assert host == "0.0.0.0" and port in exposed, variable
    data_dir = environment.split("KEEL_DATA_DIR=", 1)[1].split()[0]
    assert json.loads(arguments(final, "VOLUME")[0]) == [data_dir]


# --- the build context ----------------------------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _matches(pattern: str, path: str) -> bool:
    """Docker's matching: a pattern matches a path or any of its parent directories;
    ``**/`` also matches at the top."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    patterns = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
    return any(fnmatch.fnmatchcase(c, p.rstrip("/")) for c in candidates for p in patterns)


def in_context(path: str) -> bool:
    """Whether .dockerignore sends ``path`` (relative to the repository) to the build: the
    last pattern that matches decides, ``!`` patterns include."""
    included = True
    for pattern in ignore_patterns():
        negated = pattern.startswith("!")
        if _matches(pattern.lstrip("!"), path):
            included = negated
    return included


def tracked_files() -> list[str]:
    """The repository's files as a fresh clone has them (git's, and new ones not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def test_the_context_holds_what_the_builder_copies_and_nothing_local() -> None:
    sources = [
        copy.split()[0].rstrip("/")
        for copy in arguments(stages()[0], "COPY")
        if not copy.startswith("--from")
    ]
    files = tracked_files()
    for source in sources:
        under = [f for f in files if f == source or f.startswith(source + "/")]
        assert under and all(in_context(f) for f in under), source
    for local in (".git/HEAD", ".venv/bin/python", "var/keel.db", "node_modules/x", "README.md"):
        assert not in_context(local), local
    assert not in_context("tests/conftest.py") and not in_context("bench/ports.py")
    assert not in_context("service_kit/__pycache__/config.cpython-311.pyc")


def test_the_wheel_built_from_the_context_carries_what_the_processes_read(
    tmp_path: Path,
) -> None:
    """The builder's ``pip install ./``, offline: the wheel of exactly the files .dockerignore
    lets through has every file the processes read — the migrations, the bridge's static
    pages (/keel.js, /demo) — besides the code."""
    context = tmp_path / "context"
    for name in tracked_files():
        if in_context(name):
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    built = subprocess.run(
        [str(BIN / "pip"), "wheel", "-q", *offline, "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("keel-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert "keel/channels/v1/channels_pb2.py" in in_wheel  # gen/ is a package root
    data = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert sorted(name for name in data if name not in in_wheel) == []
    assert "gateway_bridge/bridge/static/keel.js" in in_wheel
    assert any(name.startswith("service_kit/migrations/versions/0001") for name in in_wheel)
