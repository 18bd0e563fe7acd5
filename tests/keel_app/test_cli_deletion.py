"""``keel tenants delete`` and ``keel tenants deletion``: the real command, on both databases.

The purge itself runs in this test process (as a tenant-service process would run it), so
the command is seen reporting a deletion before and after it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.auth import TenantId
from service_kit.purge import purge_tenant
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import Tenant
from tests.conftest import unique
from tests.tenant_service.test_deletion import ROWS, everywhere, fill_every_table

KEEL = [sys.executable, "-m", "keel_app.cli"]


async def keel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*KEEL, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def keel_json(env: dict[str, str], *args: str) -> Any:
    result = await keel(env, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_delete_then_deletion_show_the_purge_before_and_after(
    engine: AsyncEngine, database_url: str, keel_env: dict[str, str]
) -> None:
    env = keel_env | {"DATABASE_URL": database_url}
    name = unique("cli-del")
    store = SqlTenantStore(engine)
    tenant_id = str(uuid.uuid4())
    await store.insert(Tenant(id=TenantId(tenant_id), name=name, client_id=unique("c")), "h", None)
    await fill_every_table(engine, tenant_id)

    deleted = await keel(env, "tenants", "delete", tenant_id)
    assert deleted.returncode == 0, deleted.stderr
    assert f"keel tenants deletion {tenant_id}" in deleted.stderr
    started = json.loads(deleted.stdout)
    assert started == {
        "tenant_id": tenant_id,
        "name": name,
        "state": "TENANT_DELETION_STATE_DELETING",
        "purged_rows": {},
        "start_time": started["start_time"],
        "update_time": started["update_time"],
    }
    assert started["start_time"].endswith("Z")  # the gRPC JSON time format
    shown, never = await asyncio.gather(
        keel_json(env, "tenants", "deletion", tenant_id),
        keel(env, "tenants", "deletion", str(uuid.uuid4())),
    )
    assert shown == started
    assert never.returncode == 1 and "has no deletion" in never.stderr

    await purge_tenant(engine, tenant_id, batch_size=2)

    done = await keel_json(env, "tenants", "deletion", tenant_id)
    assert done["state"] == "TENANT_DELETION_STATE_PURGED"
    # int64 counts are strings in the gRPC JSON, as grpcurl shows them.
    assert done["purged_rows"] == {name: str(n) for name, n in everywhere(ROWS).items()}
    assert done["finish_time"] >= done["start_time"]
