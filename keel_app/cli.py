"""The ``keel`` command: serve a process, migrate the database, administer tenants.

    keel serve all | tenant-service | gateway | notification-service | file-service
    keel migrate
    keel tenants create NAME [--permission SCOPE]... [--client-id ID] [--rate-limit RPS]
                             [--burst N] [--origin URL]...
    keel tenants list
    keel tenants get TENANT_ID
    keel tenants rotate-secret TENANT_ID
    keel tenants delete TENANT_ID
    keel tenants seed FILE        (YAML or JSON list, like the seed's seedTenants())

The tenant commands work on the database directly (``DATABASE_URL``); they
print JSON. Exit codes: 0 success, 1 failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from keel_app.processes import PROCESSES, serve
from service_kit.auth import TenantId
from service_kit.config import ConfigError, Settings, load_settings
from service_kit.db import create_engine, migrate
from service_kit.errors import KeelError
from service_kit.logs import configure_logging
from service_kit.server import open_runtime
from tenant_service.server import build_directory
from tenant_service.tenants import Tenant, TenantDirectory, tenant_from_seed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description="Keel: real-time platform services.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run a Keel process until SIGTERM")
    serve_cmd.add_argument("process", choices=PROCESSES)

    commands.add_parser("migrate", help="apply database migrations and exit")

    tenants = commands.add_parser("tenants", help="administer tenants (on the database directly)")
    tenant_cmds = tenants.add_subparsers(dest="tenant_command", required=True)
    create = tenant_cmds.add_parser("create", help="create a tenant; prints its one-time secret")
    create.add_argument("name")
    create.add_argument("--permission", action="append", default=[], metavar="SCOPE")
    create.add_argument("--client-id", default="")
    create.add_argument("--rate-limit", type=int, default=0, metavar="RPS")
    create.add_argument("--burst", type=int, default=0)
    create.add_argument("--origin", action="append", default=[], metavar="URL")
    tenant_cmds.add_parser("list", help="list every tenant")
    for name, text in (
        ("get", "show one tenant"),
        ("rotate-secret", "replace a tenant's secret; prints the new one"),
        ("delete", "delete a tenant"),
    ):
        tenant_cmds.add_parser(name, help=text).add_argument("tenant_id")
    seed = tenant_cmds.add_parser("seed", help="create the tenants listed in a YAML/JSON file")
    seed.add_argument("file", type=Path)
    return parser


def tenant_json(tenant: Tenant, secret: str | None = None) -> dict[str, Any]:
    """A tenant as the CLI prints it."""
    out: dict[str, Any] = {
        "tenant_id": tenant.id,
        "name": tenant.name,
        "client_id": tenant.client_id,
        "permissions": list(tenant.permissions),
        "rate_limits": {
            "requests_per_second": tenant.rate_limit_rps,
            "burst": tenant.rate_limit_burst,
        },
        "allowed_origins": list(tenant.allowed_origins),
        "require_origin": tenant.require_origin,
        "metadata": dict(tenant.metadata),
        "create_time": tenant.create_time.isoformat(),
    }
    if secret is not None:
        out["client_secret"] = secret
    return out


async def _with_directory(
    settings: Settings, action: Callable[[TenantDirectory], Awaitable[Any]]
) -> Any:
    runtime = await open_runtime(settings, wait_for_database=5.0)
    try:
        return await action(build_directory(runtime))
    finally:
        await runtime.close()


async def _tenants(args: argparse.Namespace, settings: Settings) -> Any:
    command = args.tenant_command

    async def run(directory: TenantDirectory) -> Any:
        if command == "create":
            tenant, secret = await directory.create(
                Tenant(
                    id=TenantId(""),
                    name=args.name,
                    client_id=args.client_id,
                    permissions=tuple(args.permission),
                    rate_limit_rps=args.rate_limit,
                    rate_limit_burst=args.burst,
                    allowed_origins=tuple(args.origin),
                )
            )
            return tenant_json(tenant, secret)
        if command == "list":
            found, after = [], None
            while page := await directory.list(limit=500, after=after):
                found += [tenant_json(t) for t in page]
                after = (page[-1].create_time, page[-1].id)
            return found
        if command == "get":
            return tenant_json(await directory.get(args.tenant_id))
        if command == "rotate-secret":
            result = tenant_json(*await directory.rotate_secret(args.tenant_id))
            _warn_without_shared_bus(settings)
            return result
        if command == "delete":
            await directory.delete(args.tenant_id)
            _warn_without_shared_bus(settings)
            return {"deleted": args.tenant_id}
        return await _seed(directory, args.file, args.file.read_text())

    return await _with_directory(settings, run)


def _warn_without_shared_bus(settings: Settings) -> None:
    if settings.redis_url is None:
        print(
            "note: without REDIS_URL this change cannot be announced to running servers;"
            f" they accept cached credentials for up to {settings.auth_cache_seconds:g}s."
            " Use the TenantService API for an immediate effect.",
            file=sys.stderr,
        )


async def _seed(directory: TenantDirectory, path: Path, text: str) -> list[dict[str, Any]]:
    """Create each tenant of the file; existing ones (same client id or name) are skipped."""
    from tenant_service.errors import TenantConflict

    entries = yaml.safe_load(text)
    if isinstance(entries, dict) and "tenants" in entries:
        entries = entries["tenants"]
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of tenants (or a mapping with 'tenants')")
    results = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {number} is not a mapping")
        tenant, secret = tenant_from_seed(entry)
        try:
            created, secret = await directory.create(tenant, client_secret=secret)
        except TenantConflict as exc:
            results.append({"client_id": tenant.client_id, "skipped": exc.message})
            print(f"entry {number}: skipped: {exc.message}", file=sys.stderr)
            continue
        results.append(tenant_json(created, secret))
        print(f"entry {number}: created {created.name!r}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``keel`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level if args.command == "serve" else "WARNING")
    try:
        if args.command == "serve":
            asyncio.run(serve(args.process, settings))
            return 0
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
            print("database schema is up to date", file=sys.stderr)
            return 0
        result = asyncio.run(_tenants(args, settings))
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 2
    except KeelError as exc:
        print(f"keel: {exc.message}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


async def _migrate(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
