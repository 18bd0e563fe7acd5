"""``keel tenants create/update/get/list/rotate-secret``: the real command on a SQLite data dir.

The JSON it prints must be the gRPC API's JSON of the tenant, as ``grpcurl -emit-defaults``
prints ``GetTenant``'s answer: the same names, order, times and numbers.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import grpcurl, keel_cli, start_keel

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TENANT_FIELDS = [
    "id",
    "name",
    "client_id",
    "permissions",
    "rate_limits",
    "allowed_origins",
    "require_origin",
    "metadata",
    "create_time",
    "update_time",
    "secret_rotate_time",
]


def keel_json(env: dict[str, str], *args: str) -> Any:
    result = keel_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def shop(keel_env: dict[str, str]) -> dict[str, Any]:
    """A tenant made with every option of ``keel tenants create``."""
    return keel_json(  # type: ignore[no-any-return]
        keel_env,
        *("tenants", "create", unique("shop"), "--permission", "chat:*"),
        *("--permission", "upload:*", "--rate-limit", "50", "--burst", "100"),
        *("--origin", "https://shop.example.com", "--require-origin"),
        *("--metadata", '{"plan": "pro", "seats": 5}'),
    )


def test_create_prints_the_tenant_as_the_api_does_and_its_secret(shop: dict[str, Any]) -> None:
    assert list(shop) == [*TENANT_FIELDS, "client_secret"]
    assert shop["permissions"] == ["chat:*", "upload:*"]
    assert shop["rate_limits"] == {"requests_per_second": 50, "burst": 100}
    assert shop["allowed_origins"] == ["https://shop.example.com"]
    assert shop["require_origin"] is True
    assert shop["metadata"] == {"plan": "pro", "seats": 5}
    assert all(RFC3339_UTC.match(shop[f]) for f in TENANT_FIELDS if f.endswith("_time"))
    assert shop["client_secret"].startswith("ks_")


def test_update_changes_only_the_fields_given(
    keel_env: dict[str, str], shop: dict[str, Any]
) -> None:
    tenant_id = shop["id"]
    rps = keel_json(keel_env, "tenants", "update", tenant_id, "--rate-limit", "7")
    assert rps["rate_limits"] == {"requests_per_second": 7, "burst": 100}
    unchanged = [f for f in TENANT_FIELDS if f not in ("rate_limits", "update_time")]
    assert {f: rps[f] for f in unchanged} == {f: shop[f] for f in unchanged}
    assert rps["update_time"] > shop["update_time"]

    changed = keel_json(
        keel_env,
        *("tenants", "update", tenant_id, "--burst", "9", "--no-require-origin"),
        *(
            "--permission",
            "chat:read",
            "--origin",
            "https://a.example",
            "--origin",
            "http://b.test",
        ),
        *("--metadata", '{"plan": "free"}', "--name", shop["name"] + "-2"),
    )
    assert changed["rate_limits"] == {"requests_per_second": 7, "burst": 9}
    assert changed["require_origin"] is False
    assert changed["permissions"] == ["chat:read"]
    assert changed["allowed_origins"] == ["https://a.example", "http://b.test"]
    assert changed["metadata"] == {"plan": "free"}
    assert changed["name"] == shop["name"] + "-2"
    assert "client_secret" not in changed

    cleared = keel_json(
        keel_env, "tenants", "update", tenant_id, "--no-permissions", "--no-origins"
    )
    assert (cleared["permissions"], cleared["allowed_origins"]) == ([], [])
    assert keel_json(keel_env, "tenants", "get", tenant_id) == cleared


def test_bad_updates_are_refused_and_change_nothing(
    keel_env: dict[str, str], shop: dict[str, Any]
) -> None:
    update = ("tenants", "update", shop["id"])
    nobody = ("tenants", "update", "00000000-0000-4000-8000-000000000000")
    deep = '{"a": ' * 40 + "1" + "}" * 40
    cases = [  # (arguments, exit code, what stderr says)
        (update, 2, "give at least one field to change"),
        ((*update, "--metadata", "[1]"), 2, "must be a JSON object"),
        ((*update, "--metadata", '{"x": NaN}'), 2, "NaN is not JSON"),
        ((*update, "--permission", "chat:*", "--no-permissions"), 2, "not allowed with"),
        ((*update, "--permission", "chat:*", "--permission", "bad scope"), 1, "permissions[1]"),
        ((*update, "--burst", "-1"), 1, "tenant.rate_limits.burst"),
        ((*update, "--metadata", deep), 1, "nested deeper than 32 levels"),
        ((*nobody, "--burst", "1"), 1, "not found"),
    ]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:  # a process each: run at once
        results = list(pool.map(lambda case: keel_cli(*case[0], env=keel_env), cases))
    for (args, code, message), result in zip(cases, results, strict=True):
        assert (result.returncode, result.stdout) == (code, ""), (args, result)
        assert message in result.stderr, (args, result.stderr)
    shown = keel_json(keel_env, "tenants", "get", shop["id"])
    assert shown == {k: v for k, v in shop.items() if k != "client_secret"}


def test_list_and_rotate_secret_print_the_same_shape(
    keel_env: dict[str, str], shop: dict[str, Any]
) -> None:
    listed = keel_json(keel_env, "tenants", "list")
    assert [t for t in listed if t["id"] == shop["id"]] == [
        {k: v for k, v in shop.items() if k != "client_secret"}
    ]
    rotated = keel_json(keel_env, "tenants", "rotate-secret", shop["id"])
    assert list(rotated) == [*TENANT_FIELDS, "client_secret"]
    assert rotated["client_secret"] != shop["client_secret"]
    assert rotated["secret_rotate_time"] > shop["secret_rotate_time"]


def test_the_json_is_what_grpcurl_prints_for_get_tenant(
    keel_env: dict[str, str], shop: dict[str, Any], tmp_path: Path
) -> None:
    env = keel_env | {"KEEL_ADMIN_TOKEN": ADMIN_TOKEN}
    metadata = '{"zeta": 1, "alpha": {"z": 1.5, "b": [3, {"y": null, "a": true}]}, "big": 1e20}'
    cli = keel_json(env, "tenants", "update", shop["id"], "--metadata", metadata, "--no-origins")
    keel = start_keel("all", env, tmp_path / "logs")
    try:
        answer = grpcurl(
            *("-plaintext", "-emit-defaults", "-H", f"authorization: Bearer {ADMIN_TOKEN}"),
            *("-d", json.dumps({"id": shop["id"]}), keel.addr),
            "keel.tenants.v1.TenantService/GetTenant",
        )
    finally:
        keel.stop()
    assert answer.returncode == 0, answer.stderr
    grpc_json = json.loads(answer.stdout)["tenant"]
    # The same names in the same order, the same times and numbers, key for key.
    assert json.dumps(cli) == json.dumps(grpc_json)
