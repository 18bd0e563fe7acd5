"""Concurrent SendNotification calls through the real gRPC server (whose sends share
transactions and whose recipient checks share gateway calls), on SQLite and PostgreSQL:
each call is answered as if it had been alone."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from keel.notifications.v1 import notifications_pb2 as pb

from tests.notification_service.conftest import Tenant, World
from tests.notification_service.test_servicer import IN_APP, missing_users


async def _results(*calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_concurrent_sends_each_get_their_own_notifications(tenant: Tenant) -> None:
    await tenant.users("ann", "bob", "cat")
    users = ["ann", "bob", "cat", "ann", "ann", "bob"]
    answers = await _results(*(tenant.send(u, title=f"n{i}") for i, u in enumerate(users)))
    assert [(a[0].user_id, a[0].title) for a in answers] == [
        (u, f"n{i}") for i, u in enumerate(users)
    ]
    assert len({a[0].id for a in answers}) == len(users)
    inbox = await tenant.inbox("ann")
    assert inbox.unread_count == 3
    assert {n.title for n in inbox.notifications} == {"n0", "n3", "n4"}


async def test_a_missing_user_fails_only_the_send_that_named_it(world: World) -> None:
    tenant, other = await world.tenant(), await world.tenant()
    await tenant.users("ann", "bob")
    await other.users("zoe")
    answers = await _results(
        tenant.send("ann"),
        tenant.send("bob", "ghost"),
        other.send("zoe"),
        other.send("ann"),  # the other tenant's user
        tenant.send("bob"),
    )
    assert [a[0].user_id for a in (answers[0], answers[2], answers[4])] == ["ann", "zoe", "bob"]
    for failed, named in ((answers[1], ["ghost"]), (answers[3], ["ann"])):
        assert isinstance(failed, grpc.aio.AioRpcError)
        assert failed.code() == grpc.StatusCode.NOT_FOUND and missing_users(failed) == named
    assert (await tenant.inbox("bob")).unread_count == 1


async def test_concurrent_retries_of_one_request_id_store_it_once(tenant: Tenant) -> None:
    await tenant.users("ann")
    answers = await _results(
        *(tenant.send("ann", request_id="same", channels=[IN_APP]) for _ in range(6))
    )
    assert all(isinstance(a, list) for a in answers), answers
    assert len({a[0].id for a in answers}) == 1
    assert (await tenant.inbox("ann")).unread_count == 1
    request = pb.ListNotificationsRequest(user_id="ann")
    listed = await tenant.notifications.ListNotifications(request, metadata=tenant.md)
    assert len(listed.notifications) == 1
