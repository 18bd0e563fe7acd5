"""Sends remember the users they found for a few seconds (so that a busy tenant's small
sends do not each ask the gateway again), per tenant, and never remember a user that was
missing."""

from __future__ import annotations

import grpc

from notification_service.recipients import KnownUsers
from tests.notification_service.conftest import World
from tests.notification_service.test_servicer import missing_users


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_users_found_are_known_for_a_while_and_per_tenant() -> None:
    clock = Clock()
    known = KnownUsers(seconds=10, clock=clock)
    assert known.unknown("t1", ["ann", "bob"]) == ["ann", "bob"]
    known.found("t1", ["ann"])
    assert known.unknown("t1", ["ann", "bob"]) == ["bob"]
    assert known.unknown("t2", ["ann"]) == ["ann"]  # another tenant's ann is not this one
    clock.now += 9.9
    assert known.unknown("t1", ["ann"]) == []
    clock.now += 0.2
    assert known.unknown("t1", ["ann"]) == ["ann"]  # asked again once the while is over


def test_the_memory_is_bounded() -> None:
    known = KnownUsers(seconds=10, max_users=3, clock=Clock())
    known.found("t1", ["a", "b", "c"])
    known.found("t1", ["d"])  # over the bound: starts again
    assert known.unknown("t1", ["a", "b", "c", "d"]) == ["a", "b", "c"]


async def test_a_missing_user_is_not_remembered_and_another_tenants_user_is_not_found(
    world: World,
) -> None:
    tenant, other = await world.tenant(), await world.tenant()
    await tenant.users("ann")
    assert (await tenant.send("ann"))[0].user_id == "ann"
    for sender, user_id in ((other, "ann"), (tenant, "ghost")):
        try:
            await sender.send(user_id)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND and missing_users(exc) == [user_id]
        else:
            raise AssertionError(f"a send to {user_id!r} was not refused")
    await tenant.users("ghost")  # created a moment later: sent to at once
    assert [n.user_id for n in await tenant.send("ghost", "ann")] == ["ghost", "ann"]
