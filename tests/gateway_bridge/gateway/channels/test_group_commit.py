"""Group commit's decisions without a database: seqs, idempotency, membership, who runs alone."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime

from gateway_bridge.gateway.channels.errors import AttachmentsNotReady, ChannelNotFound, NotAllowed
from gateway_bridge.gateway.channels.models import (
    Attachment,
    ChannelId,
    ChannelType,
    Message,
    NewMessage,
)
from gateway_bridge.gateway.channels.store.group_commit import (
    Alone,
    Earlier,
    LockedChannel,
    Placed,
    Plan,
    ReadyFile,
    Refused,
    RepeatOf,
    new_message,
    plan_batch,
)
from service_kit.auth import TenantId

NOW = datetime(2026, 11, 30, 10, 7, 38, tzinfo=UTC)
ACME, GLOBEX = TenantId("acme"), TenantId("globex")
GROUP = LockedChannel("c-group", ACME, ChannelType.GROUP, 10)
PUBLIC = LockedChannel("c-public", ACME, ChannelType.PUBLIC, 0)
OTHER = LockedChannel("c-other", ACME, ChannelType.GROUP, 3)
MEMBERS = {(GROUP.id, "alice"), (GROUP.id, "bob"), (OTHER.id, "alice"), (PUBLIC.id, "alice")}


def send(channel: LockedChannel, user_id: str = "alice", key: str = "") -> NewMessage:
    return NewMessage(ChannelId(channel.id), user_id, f"hi from {user_id}", idempotency_key=key)


def ids() -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"m{n}"


def plan(
    sends: Sequence[NewMessage | tuple[TenantId, NewMessage]],
    *,
    channels: Collection[LockedChannel] = (GROUP, PUBLIC, OTHER),
    members: Collection[tuple[str, str]] = MEMBERS,
    stored: Mapping[tuple[str, str], Message] | None = None,
    ready: Mapping[tuple[str, str], Attachment] | None = None,
) -> Plan:
    batch = [s if isinstance(s, tuple) else (ACME, s) for s in sends]
    return plan_batch(
        batch,
        channels=channels,
        members=members,
        stored=stored or {},
        ready=ready or {},
        now=NOW,
        make_id=ids().__next__,
    )


def seqs(found: Plan) -> list[tuple[str, int]]:
    return [(p.message.channel_id, p.message.seq) for p in found.placed]


def test_seqs_continue_from_last_seq_per_channel_in_batch_order_without_gaps() -> None:
    found = plan([send(GROUP), send(OTHER), send(GROUP, "bob"), send(GROUP), send(OTHER)])

    assert seqs(found) == [
        (GROUP.id, 11),
        (OTHER.id, 4),
        (GROUP.id, 12),
        (GROUP.id, 13),
        (OTHER.id, 5),
    ]
    assert found.last_seq == {GROUP.id: 13, OTHER.id: 5}
    assert [p.message.id for p in found.placed] == ["m1", "m2", "m3", "m4", "m5"]
    assert {p.message.created_at for p in found.placed} == {NOW}
    assert found.alone == [] and found.repeats == []


def test_a_placed_message_is_the_send_with_its_seq_time_and_id() -> None:
    new = send(GROUP, key="k1")

    (outcome,) = plan([new]).outcomes

    assert outcome == Placed(new_message(ACME, new, 11, NOW, "m1"), "k1")


def test_a_channel_that_is_missing_or_another_tenants_is_not_found_and_takes_no_seq() -> None:
    missing = NewMessage(ChannelId("c-missing"), "alice", "hi")

    found = plan([(GLOBEX, send(GROUP)), missing, send(GROUP)])

    refused = found.outcomes[:2]
    assert all(isinstance(o, Refused) and isinstance(o.error, ChannelNotFound) for o in refused)
    assert seqs(found) == [(GROUP.id, 11)]
    assert found.last_seq == {GROUP.id: 11}


def test_a_stored_idempotency_key_answers_with_the_stored_message_and_no_seq() -> None:
    earlier = new_message(ACME, send(GROUP, key="k1"), 7, NOW, "stored")

    found = plan([send(GROUP, key="k1"), send(GROUP, key="k2")], stored={(GROUP.id, "k1"): earlier})

    assert found.outcomes[0] == Earlier(earlier)
    assert seqs(found) == [(GROUP.id, 11)]


def test_a_key_stored_in_another_channel_does_not_count() -> None:
    earlier = new_message(ACME, send(OTHER, key="k1"), 2, NOW, "stored")

    found = plan([send(GROUP, key="k1")], stored={(OTHER.id, "k1"): earlier})

    assert seqs(found) == [(GROUP.id, 11)]


def test_a_key_repeated_in_one_batch_is_placed_once_and_the_repeat_gets_that_message() -> None:
    found = plan([send(GROUP, key="k1"), send(GROUP, "bob"), send(GROUP, key="k1")])

    first = found.outcomes[0]
    assert isinstance(first, Placed)
    assert found.outcomes[2] == RepeatOf(0, first.message)
    assert found.repeats == [(2, 0)]
    assert seqs(found) == [(GROUP.id, 11), (GROUP.id, 12)]


def test_a_non_member_of_a_group_channel_is_not_allowed() -> None:
    found = plan([send(GROUP, "mallory"), send(GROUP)])

    refusal = found.outcomes[0]
    assert isinstance(refusal, Refused) and isinstance(refusal.error, NotAllowed)
    assert "'mallory' is not a member of this group channel" in refusal.error.message
    assert seqs(found) == [(GROUP.id, 11)]


def test_a_non_member_writing_to_a_public_channel_runs_alone_and_takes_no_seq() -> None:
    found = plan([send(PUBLIC, "carol"), send(PUBLIC)])

    assert found.outcomes[0] == Alone()
    assert found.alone == [0]
    assert seqs(found) == [(PUBLIC.id, 1)]


def test_the_backend_itself_empty_user_id_is_always_placed() -> None:
    found = plan([send(GROUP, ""), send(PUBLIC, "")], members=set())

    assert seqs(found) == [(GROUP.id, 11), (PUBLIC.id, 1)]
    assert found.alone == []


def test_a_batch_that_places_nothing_moves_no_channel() -> None:
    found = plan([send(GROUP, "mallory"), send(PUBLIC, "carol")])

    assert found.placed == []
    assert found.last_seq == {}


PHOTO = Attachment("f-photo", "cat.png", "image/png", 1234, 256, 192)
NOTES = Attachment("f-notes", "notes.txt", "text/plain", 42)


def test_a_send_carries_its_ready_files_in_the_order_it_named_them() -> None:
    new = NewMessage(ChannelId(GROUP.id), "alice", "", attachment_ids=("f-notes", "f-photo"))
    ready = {
        (ACME, "f-photo"): ReadyFile("alice", PHOTO),
        (ACME, "f-notes"): ReadyFile("alice", NOTES),
    }

    found = plan([new], ready=ready)

    assert [p.message.attachments for p in found.placed] == [(NOTES, PHOTO)]


def test_a_send_naming_a_file_that_is_not_ready_in_its_tenant_is_refused_and_takes_no_seq() -> None:
    # f-photo is ready, but in another tenant; f-gone is no ready file at all.
    new = NewMessage(
        ChannelId(GROUP.id), "alice", "", attachment_ids=("f-notes", "f-photo", "f-gone")
    )
    ready = {
        (ACME, "f-notes"): ReadyFile("alice", NOTES),
        (GLOBEX, "f-photo"): ReadyFile("alice", PHOTO),
    }

    found = plan([new, send(GROUP)], ready=ready)

    refused = found.outcomes[0]
    assert isinstance(refused, Refused) and isinstance(refused.error, AttachmentsNotReady)
    assert [v.field for v in refused.error.violations] == ["attachment_ids[1]", "attachment_ids[2]"]
    assert seqs(found) == [(GROUP.id, 11)]


def test_a_user_attaches_only_files_they_uploaded_and_the_backend_any() -> None:
    ready = {(ACME, "f-photo"): ReadyFile("bob", PHOTO), (ACME, "f-notes"): ReadyFile("", NOTES)}
    by_alice = NewMessage(ChannelId(GROUP.id), "alice", "", attachment_ids=("f-photo", "f-notes"))
    by_backend = NewMessage(ChannelId(GROUP.id), "", "", attachment_ids=("f-photo", "f-notes"))

    found = plan([by_alice, by_backend], ready=ready)

    refused = found.outcomes[0]
    assert isinstance(refused, Refused) and isinstance(refused.error, AttachmentsNotReady)
    assert [v.field for v in refused.error.violations] == ["attachment_ids[0]", "attachment_ids[1]"]
    assert [p.message.attachments for p in found.placed] == [(PHOTO, NOTES)]
