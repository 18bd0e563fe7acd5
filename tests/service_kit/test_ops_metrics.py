"""The kit's operational metrics: what the job worker counts and samples, and which
dependencies the server's health check reports reachable — read back from
prometheus_client's registry, as ``/metrics`` serves them.

Each test uses job kinds of its own, so counts other tests leave behind never mix in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.job_worker import JobWorker
from service_kit.jobs import Job
from service_kit.server import KeelServer, open_runtime
from tests.conftest import REDIS_URL, settings_for
from tests.service_kit.test_jobs import add, epoch, new_kind
from tests.service_kit.test_server import TcpProxy, broken_spec

#: How long a wait for the health check to notice a change may take before the test fails.
WAIT = 10.0


def finished(kind: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("keel_jobs_finished_total", {"kind": kind, "outcome": outcome})
        or 0.0
    )


def depth(kind: str) -> float | None:
    return REGISTRY.get_sample_value("keel_job_queue_depth", {"kind": kind})


def dependency_up(dependency: str) -> float | None:
    return REGISTRY.get_sample_value("keel_dependency_up", {"dependency": dependency})


async def test_the_worker_counts_jobs_by_outcome(engine: AsyncEngine) -> None:
    good, bad, clock = new_kind(), new_kind(), epoch()
    await add(engine, good, clock())
    await add(engine, bad, clock(), max_attempts=2)

    async def succeed(job: Job) -> None:
        pass

    async def fail(job: Job) -> None:
        raise RuntimeError("the receiver is down")

    worker = JobWorker(engine, {good: succeed, bad: fail}, clock=clock, rand=lambda: 0.0)
    assert await worker.run_due() == 2
    assert (finished(good, "succeeded"), finished(bad, "failed")) == (1, 1)
    assert finished(bad, "given_up") == 0

    clock.advance(3600)  # past the backoff: the second and last attempt fails for good
    assert await worker.run_due() == 1
    assert (finished(bad, "failed"), finished(bad, "given_up")) == (1, 1)
    assert finished(good, "succeeded") == 1


async def test_queue_depth_counts_due_jobs_of_the_workers_own_kinds(engine: AsyncEngine) -> None:
    mine, idle, theirs, clock = new_kind(), new_kind(), new_kind(), epoch()
    for _ in range(3):
        await add(engine, mine, clock())
    await add(engine, mine, clock(), run_after=clock() + timedelta(minutes=5))  # not due yet
    await add(engine, theirs, clock())

    async def handler(job: Job) -> None:
        pass

    worker = JobWorker(engine, {mine: handler, idle: handler}, clock=clock)
    await worker.sample_queue_depth()
    # Another process's kind is left to that process.
    assert (depth(mine), depth(idle), depth(theirs)) == (3, 0, None)

    assert await worker.run_due() == 3
    await worker.sample_queue_depth()
    assert depth(mine) == 0


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a gauge the health check sets) until it holds."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {WAIT}s")


@pytest.fixture
async def proxied_redis() -> AsyncIterator[tuple[TcpProxy, str]]:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    await proxy.start()
    yield proxy, REDIS_URL.replace(f":{port}", f":{proxy.port}")
    with contextlib.suppress(Exception):  # already cut by the test
        await proxy.cut()


async def test_the_health_check_reports_redis_down_and_back(
    proxied_redis: tuple[TcpProxy, str], sqlite_url: str, tmp_path: Path
) -> None:
    proxy, redis_url = proxied_redis
    runtime = await open_runtime(settings_for(sqlite_url, tmp_path, redis_url=redis_url))
    server = KeelServer(runtime, [broken_spec()], authenticator=None, health_interval=0.05)
    await server.start()
    try:
        assert (dependency_up("database"), dependency_up("redis")) == (1, 1)
        await proxy.cut()
        await wait_for(lambda: dependency_up("redis") == 0, "redis reported down")
        assert dependency_up("database") == 1
        await proxy.start(proxy.port)
        await wait_for(lambda: dependency_up("redis") == 1, "redis reported up again")
    finally:
        await server.stop(1)
        await runtime.close()
