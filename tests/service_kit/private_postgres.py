"""A PostgreSQL server of a test's own, to stop and restart without touching the shared one.

``initdb`` on a fresh directory under the system temp dir and ``pg_ctl`` on a free port
of 127.0.0.1 (trust authentication, user ``postgres``). PostgreSQL refuses to run as
root, so when the tests run as root the commands run as the ``postgres`` user
(``runuser``) and the directory is given to it. Every command is bounded (``pg_ctl -t``
and a subprocess timeout).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port

#: The longest any pg_ctl command may take.
PG_CTL_TIMEOUT = 60


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _version(path: str) -> int:
    parts = Path(path).parts
    return int(parts[-3]) if parts[-3].isdigit() else 0


class PrivatePostgres:
    """One private PostgreSQL cluster: :meth:`start`, :meth:`stop`, :meth:`remove`."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("no PostgreSQL server binaries (pg_ctl, initdb) on this machine")
        self._bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="keel-private-pg-"))
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    @property
    def admin_url(self) -> str:
        """The URL of its ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def _ctl(self, *args: str, wait: bool = True) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-t",
            str(PG_CTL_TIMEOUT),
            *args,
            "-w" if wait else "-W",
        )

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("start", "-o", options)

    def stop(self, mode: str = "fast", *, wait: bool = True) -> None:
        """Stop it (``smart`` waits for every session to end, ``fast`` ends them);
        with ``wait=False``, return as soon as the shutdown began."""
        self._ctl("stop", "-m", mode, wait=wait)

    def is_running(self) -> bool:
        """Whether its postmaster still runs (its pid file exists)."""
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        """Stop it if it runs (immediately) and delete its directory."""
        if self.is_running():
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)
