"""``keel serve gateway|bridge --workers N``: one host's cores behind one port.

Python runs one thread of Python code at a time, so one ``keel serve bridge`` or ``keel
serve gateway`` uses about one core. With ``--workers N`` (N > 1) the ``keel serve``
process becomes a *supervisor*: it serves nothing itself and runs N *workers*, each the
same ``keel serve <process>`` command in its own process with ``KEEL_WORKER_INDEX`` set
(0 … N-1; internal, not for operators). Every worker binds the same gRPC port (gateway)
or WebSocket port (bridge) with ``SO_REUSEPORT``, and the kernel spreads new connections
over them.

Invariants:

- **One port, N metrics ports.** The workers share ``KEEL_GRPC_ADDR`` / ``KEEL_WS_ADDR``;
  worker ``i`` serves ``/metrics`` on the port of ``KEEL_METRICS_ADDR`` plus ``i``, so each
  can be scraped. Port 0 is refused for the shared port (each worker would get a port of
  its own) — and for the metrics port it stays 0 (each worker picks one).
- **Every log line of a worker names it** (the ``worker`` field); the supervisor's lines
  have none.
- **Stopping drains every worker.** SIGTERM/SIGINT to the supervisor is forwarded to
  every worker as SIGTERM; each stops as a single process does (bridge sockets closed
  with 1012, in-flight RPCs given ``KEEL_SHUTDOWN_GRACE_SECONDS``). The supervisor waits
  for each, kills one that is still running ``KEEL_SHUTDOWN_GRACE_SECONDS`` +
  :data:`STOP_MARGIN` seconds later, and exits 0 only when every worker exited 0.
- **A worker that dies is restarted**, after 1 s, then 2, 4 … up to
  :data:`MAX_BACKOFF` seconds while it keeps dying within :data:`STABLE_AFTER` seconds of
  its start; each death is logged with the worker's index, pid and exit code. A worker
  that exits with 2 (bad configuration: every worker would) stops all of them, and the
  supervisor exits 2.
- **No database race.** Each gateway worker migrates at start like any gateway, under
  PostgreSQL's advisory lock (:func:`service_kit.db.migrate`), so N starting together
  migrate once. Gateway workers on SQLite are refused: one file's write lock would make
  them take turns rather than share the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace
from typing import Any

from service_kit.config import ConfigError, Settings

log = logging.getLogger("keel.workers")

#: What ``keel serve`` runs (kept here, light to import, for the CLI's argument parser).
PROCESSES = (
    "all",
    "tenant-service",
    "gateway",
    "bridge",
    "notification-service",
    "file-service",
)
#: The processes ``--workers`` applies to.
WORKER_PROCESSES = ("gateway", "bridge")
#: Set by the supervisor in each worker's environment: the worker's index.
WORKER_INDEX_ENV = "KEEL_WORKER_INDEX"
#: Seconds, beyond the shutdown grace, a worker may take to exit after SIGTERM.
STOP_MARGIN = 10.0
#: The longest wait before restarting a worker that keeps dying.
MAX_BACKOFF = 30.0
#: A worker that ran this long before dying is restarted after the shortest wait again.
STABLE_AFTER = 60.0


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


def check_workers(process: str, count: int, settings: Settings) -> None:
    """Raise :class:`ConfigError` when ``keel serve process --workers count`` cannot run."""
    if count < 1:
        raise ConfigError([f"--workers: must be at least 1 (got {count})"])
    if count == 1:
        return
    if process not in WORKER_PROCESSES:
        raise ConfigError(
            [
                f"--workers: `keel serve {process}` runs one process; only `keel serve gateway`"
                " and `keel serve bridge` run several workers on one port (run more"
                f" `keel serve {process}` processes instead)"
            ]
        )
    problems = []
    shared, variable = (
        (settings.grpc_addr, "KEEL_GRPC_ADDR")
        if process == "gateway"
        else (settings.ws_addr, "KEEL_WS_ADDR")
    )
    if shared.port == 0:
        problems.append(
            f"{variable}: --workers needs a fixed port for the workers to share (got port 0)"
        )
    if process == "gateway" and settings.is_sqlite:
        problems.append(
            "DATABASE_URL: `keel serve gateway --workers` needs PostgreSQL; on SQLite the"
            " workers would take turns at the file's write lock"
        )
    if problems:
        raise ConfigError(problems)


def worker_settings(settings: Settings, index: int) -> Settings:
    """``settings`` as worker ``index`` uses them: ``/metrics`` on its own port."""
    metrics = settings.metrics_addr
    if metrics is None or metrics.port == 0:
        return settings
    return replace(settings, metrics_addr=replace(metrics, port=metrics.port + index))


def label_logs(index: int) -> None:
    """Give every log record of this process a ``worker`` field: ``index``."""
    make_record = logging.getLogRecordFactory()

    def labelled(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.worker = index
        return record

    logging.setLogRecordFactory(labelled)


@dataclass
class _Worker:
    index: int
    started_at: float = 0.0
    #: Deaths in a row, each within STABLE_AFTER seconds of its start.
    failures: int = 0


class Supervisor:
    """Runs ``count`` workers of ``keel serve <process>`` until asked to stop; see the
    module docstring for what it promises."""

    def __init__(self, process: str, count: int, settings: Settings) -> None:
        self._process = process
        self._workers = [_Worker(index) for index in range(count)]
        self._stop_timeout = settings.shutdown_grace_seconds + STOP_MARGIN
        self._stopping = asyncio.Event()
        self._exit_code = 0

    async def run(self) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT, stop them; returns
        the exit code (0: every worker stopped cleanly)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await asyncio.gather(
                *(
                    asyncio.create_task(self._keep(worker), name=f"worker-{worker.index}")
                    for worker in self._workers
                )
            )
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("every worker stopped", extra={"exit_code": self._exit_code})
        return self._exit_code

    def _on_signal(self) -> None:
        if not self._stopping.is_set():
            log.info(
                "stopping every worker (SIGTERM to each)",
                extra={"timeout_seconds": self._stop_timeout},
            )
        self._stopping.set()

    async def _keep(self, worker: _Worker) -> None:
        """Run ``worker`` until the supervisor stops, and again after each unexpected exit
        (with a backoff); then stop it."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            process = await self._spawn(worker)
            exited = asyncio.create_task(process.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if self._stopping.is_set():
                await self._stop(worker, process, exited)
                return
            code = exited.result()
            ran = loop.time() - worker.started_at
            worker.failures = 1 if ran >= STABLE_AFTER else worker.failures + 1
            details = {"worker": worker.index, "pid": process.pid, "exit_code": code}
            if code == 2:
                log.error("a worker found the configuration unusable; stopping all", extra=details)
                self._exit_code = 2
                self._stopping.set()
                return
            delay = min(MAX_BACKOFF, 2.0 ** (worker.failures - 1))
            log.error(
                "a worker exited unexpectedly; restarting it",
                extra=details | {"ran_seconds": round(ran, 1), "restart_in_seconds": delay},
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                continue

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        env = os.environ | {WORKER_INDEX_ENV: str(worker.index)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keel_app.cli", "serve", self._process, env=env
        )
        worker.started_at = asyncio.get_running_loop().time()
        log.info("worker started", extra={"worker": worker.index, "pid": process.pid})
        return process

    async def _stop(
        self, worker: _Worker, process: asyncio.subprocess.Process, exited: asyncio.Task[int]
    ) -> None:
        """SIGTERM ``process`` (unless it already exited) and wait for it to drain; kill it
        when it takes longer than the grace plus :data:`STOP_MARGIN`."""
        details: dict[str, Any] = {"worker": worker.index, "pid": process.pid}
        if not exited.done():
            process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(exited, self._stop_timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            log.error("a worker did not stop in time; killed it", extra=details)
            self._exit_code = self._exit_code or 1
            return
        if code != 0:
            log.error("a worker did not stop cleanly", extra=details | {"exit_code": code})
            self._exit_code = self._exit_code or 1
        else:
            log.info("worker stopped", extra=details)


async def supervise(process: str, count: int, settings: Settings) -> int:
    """``keel serve process --workers count`` (count > 1, checked by :func:`check_workers`):
    returns the exit code."""
    return await Supervisor(process, count, settings).run()
