"""A PostgreSQL restart under a real server: UNAVAILABLE with RetryInfo, never INTERNAL,
then calls succeed again on the same pool.

The server runs on a private PostgreSQL (:mod:`tests.service_kit.private_postgres`),
stopped and restarted here; the shared one is never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.server import KeelServer, Runtime, open_runtime
from tenant_service import server as tenant_server
from tests.conftest import ADMIN_TOKEN, settings_for
from tests.service_kit.private_postgres import PrivatePostgres

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
#: The longest any state change of the private server may take to show.
WAIT = 30.0


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
async def serving(
    postgres: PrivatePostgres, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, tenants_pb2_grpc.TenantServiceStub]]:
    """The tenant service on the private PostgreSQL, and a stub calling it."""
    runtime = await open_runtime(settings_for(postgres.admin_url, tmp_path))
    # No health monitor pinging meanwhile: only the test's calls use the pool.
    server = KeelServer(
        runtime, [tenant_server.build(runtime).spec], authenticator=None, health_interval=3600
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield runtime, tenants_pb2_grpc.TenantServiceStub(channel)
    finally:
        await server.stop(0)
        await runtime.close()


async def list_tenants(stub: tenants_pb2_grpc.TenantServiceStub) -> None:
    await stub.ListTenants(tenants_pb2.ListTenantsRequest(), metadata=ADMIN, timeout=WAIT)


async def unavailable_with_retry_info(stub: tenants_pb2_grpc.TenantServiceStub) -> None:
    """The next call fails with UNAVAILABLE, a readable message and a RetryInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_tenants(stub)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert "database is unavailable" in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1


async def refused_because_shutting_down(postgres: PrivatePostgres) -> bool:
    try:
        connection = await asyncpg.connect(postgres.admin_url, timeout=5)
    except asyncpg.CannotConnectNowError:
        return True
    await connection.close()
    return False


async def test_a_server_shutting_down_or_stopped_answers_unavailable_and_a_restart_heals(
    postgres: PrivatePostgres, serving: tuple[Runtime, tenants_pb2_grpc.TenantServiceStub]
) -> None:
    runtime, stub = serving
    await list_tenants(stub)

    # Shutting down: a session still open keeps a smart shutdown going, and meanwhile
    # the server refuses new connections ("the database system is shutting down").
    holder = await asyncpg.connect(postgres.admin_url)
    try:
        postgres.stop("smart", wait=False)
        async with asyncio.timeout(WAIT):
            while True:
                if await refused_because_shutting_down(postgres):
                    break
                await asyncio.sleep(0.05)
        # Idle pooled sessions would still answer; the next call needs a new connection.
        await runtime.engine.dispose()
        await unavailable_with_retry_info(stub)
    finally:
        await holder.close()

    # Stopped: connection refused.
    async with asyncio.timeout(WAIT):
        while True:
            if not postgres.is_running():
                break
            await asyncio.sleep(0.05)
    await unavailable_with_retry_info(stub)

    # Started again: the very next call succeeds.
    postgres.start()
    await list_tenants(stub)


async def test_pooled_connections_killed_by_a_restart_are_replaced_without_an_error(
    postgres: PrivatePostgres, serving: tuple[Runtime, tenants_pb2_grpc.TenantServiceStub]
) -> None:
    _, stub = serving
    await asyncio.gather(*(list_tenants(stub) for _ in range(5)))  # the pool holds sessions
    postgres.stop("fast")  # ends every session
    postgres.start()
    # No call saw the outage, so the pool still holds the dead connections: each call
    # must be given a live one (checked out with a ping, replaced when it fails).
    await asyncio.gather(*(list_tenants(stub) for _ in range(5)))
