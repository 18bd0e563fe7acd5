"""How the orchestrator drives its helper processes: JSON lines over stdin and stdout.

A helper (a load-generator worker, the webhook receiver) runs :func:`serve_commands`
with a table of async handlers; each command ``{"id": n, "cmd": name, ...}``
runs in a task of its own, and its answer ``{"id": n, "ok": true, ...}`` (or
``{"id": n, "ok": false, "error": text}``) is written back as one line. The
orchestrator's side is :class:`Helper`, which starts the process and awaits
answers. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

ROOT = Path(__file__).resolve().parent.parent


async def serve_commands(handlers: Mapping[str, Handler]) -> None:
    """Answer commands from stdin until ``{"cmd": "exit"}`` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    tasks: set[asyncio.Task[None]] = set()

    def answer(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, separators=(",", ":")) + "\n")
        out.flush()

    async def run(command: dict[str, Any]) -> None:
        handler = handlers.get(command.get("cmd", ""))
        try:
            if handler is None:
                raise ValueError(f"unknown command {command.get('cmd')!r}")
            result = await handler(command)
            answer({"id": command.get("id"), "ok": True, **result})
        except Exception as exc:
            answer(
                {
                    "id": command.get("id"),
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-2000:],
                }
            )

    answer({"id": None, "ok": True, "ready": True, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        if command.get("cmd") == "exit":
            answer({"id": command.get("id"), "ok": True})
            break
        task = loop.create_task(run(command))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()


class HelperError(RuntimeError):
    pass


class Helper:
    """A helper process driven by JSON-line commands (see the module docstring)."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log_dir = log_dir
        self.process: asyncio.subprocess.Process | None = None
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._stderr: Any = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, wait: float = 30.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stderr = (self.log_dir / f"{self.name}.stderr").open("wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH", "")])])
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(ROOT),
            limit=1 << 26,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), wait)
        except TimeoutError:
            raise HelperError(f"{self.name} did not start within {wait}s{self._tail()}") from None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("ready") and self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
                continue
            future = self._waiting.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)
        error = HelperError(f"{self.name} exited{self._tail()}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)

    def _tail(self) -> str:
        path = self.log_dir / f"{self.name}.stderr"
        try:
            text = path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""
        return f"; its stderr ends with:\n{text}" if text.strip() else ""

    async def call(self, cmd: str, wait: float = 120.0, **fields: Any) -> dict[str, Any]:
        """Send one command and wait (at most ``wait`` s) for its answer."""
        assert self.process is not None and self.process.stdin is not None
        self._next += 1
        ident = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        line = json.dumps({"id": ident, "cmd": cmd, **fields}, separators=(",", ":")) + "\n"
        self.process.stdin.write(line.encode())
        await self.process.stdin.drain()
        try:
            answer = await asyncio.wait_for(future, wait)
        except TimeoutError:
            self._waiting.pop(ident, None)
            raise HelperError(f"{self.name}: {cmd} took longer than {wait}s") from None
        if not answer.get("ok"):
            raise HelperError(
                f"{self.name}: {cmd} failed: {answer.get('error')}\n{answer.get('trace', '')}"
            )
        return answer

    async def stop(self, wait: float = 15.0) -> None:
        """Ask it to exit; kill it if it does not within ``wait`` s."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            try:
                assert process.stdin is not None
                process.stdin.write(b'{"id":0,"cmd":"exit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(process.wait(), wait)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.process = None
