"""Deleting a tenant of a running ``keel serve all``: its calls stop at once, and the
process's own job worker purges its data, which ``keel tenants deletion`` then shows."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from tests.conftest import unique
from tests.e2e.conftest import KeelProcess, bearer, client_metadata, keel_cli, status_code

pytestmark = pytest.mark.e2e

#: The longest the purge of a small tenant may take in a running process.
PURGE_WAIT = 20.0


def test_a_deleted_tenant_is_refused_at_once_and_purged_by_the_running_process(
    serve_all: KeelProcess,
) -> None:
    admin = bearer((serve_all.data_dir / "admin-token").read_text().strip())
    with grpc.insecure_channel(serve_all.addr) as channel:
        tenants = tenants_pb2_grpc.TenantServiceStub(channel)
        chat = channels_pb2_grpc.ChannelServiceStub(channel)
        created = tenants.CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("e2e-del"), permissions=["chat:*"])
            ),
            metadata=admin,
            timeout=30,
        )
        tenant_id = created.tenant.id
        creds = client_metadata(created.tenant.client_id, created.client_secret)
        room = chat.CreateChannel(
            channels_pb2.CreateChannelRequest(name="general"), metadata=creds, timeout=10
        ).channel
        for text in ("one", "two"):
            chat.SendMessage(
                channels_pb2.SendMessageRequest(channel_id=room.id, content=text),
                metadata=creds,
                timeout=10,
            )

        tenants.DeleteTenant(
            tenants_pb2.DeleteTenantRequest(id=tenant_id), metadata=admin, timeout=10
        )
        listing = channels_pb2.ListChannelsRequest()
        assert status_code(lambda: chat.ListChannels(listing, metadata=creds, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )

        ask = tenants_pb2.GetTenantDeletionRequest(tenant_id=tenant_id)
        deadline = time.monotonic() + PURGE_WAIT
        while True:
            deletion = tenants.GetTenantDeletion(ask, metadata=admin, timeout=10).deletion
            if deletion.state == tenants_pb2.TENANT_DELETION_STATE_PURGED:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not purged within {PURGE_WAIT}s: {deletion}\n{serve_all.describe()}")
            time.sleep(0.1)

    shown = keel_cli("tenants", "deletion", tenant_id, env=serve_all.env)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["state"] == "TENANT_DELETION_STATE_PURGED"
    assert record["purged_rows"]["channels"] == "1"
    assert record["purged_rows"]["messages"] == "2"
    assert "finish_time" in record
