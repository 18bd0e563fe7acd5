"""The ``keel`` command: serve a process, migrate the database, administer tenants.

    keel serve all | tenant-service | gateway | bridge | notification-service | file-service
    keel serve gateway | bridge --workers N   (N processes sharing the port; see
                                            keel_app/workers.py)
    keel migrate                (creates a missing PostgreSQL database; prints what it applied)
    keel doctor [PROCESS]       (checks configuration, database, migrations, clock, Redis,
                                 file storage, SMTP and the Keel processes it would call;
                                 exits 1 when a check fails)
    keel tenants create NAME [--permission SCOPE]... [--client-id ID] [--rate-limit RPS]
                             [--burst N] [--origin URL]... [--require-origin] [--metadata JSON]
    keel tenants update TENANT_ID [--name NAME] [--permission SCOPE]... | [--no-permissions]
                             [--origin URL]... | [--no-origins] [--[no-]require-origin]
                             [--rate-limit RPS] [--burst N] [--metadata JSON]
                             (only the fields given change)
    keel tenants list
    keel tenants get TENANT_ID
    keel tenants rotate-secret TENANT_ID
    keel tenants delete TENANT_ID     (prints the deletion record; the purge runs in the
                                    tenant-service process)
    keel tenants deletion TENANT_ID   (the purge's state and rows purged so far, by table)
    keel tenants seed FILE        (YAML or JSON list, like the seed's seedTenants())

The tenant commands work on the database directly (``DATABASE_URL``); they
print JSON. A tenant is printed as the gRPC API's JSON shows it (``grpcurl
-emit-defaults`` of ``GetTenant``'s ``tenant``: proto field names, every field,
RFC 3339 times in UTC), plus ``client_secret`` where a new secret is shown.
Exit codes: 0 success, 1 failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

# keel_app.processes and keel_app.doctor import every service: they are imported by the
# commands that need them, so `keel tenants …` and `keel migrate` start in half the time.
from keel_app.workers import (
    PROCESSES,
    check_workers,
    label_logs,
    supervise,
    worker_index,
    worker_settings,
)
from service_kit import tracing
from service_kit.auth import TenantId
from service_kit.config import ConfigError, Settings, load_settings
from service_kit.db import check, create_database, create_engine
from service_kit.errors import KeelError
from service_kit.logs import configure_logging
from service_kit.server import open_runtime, prepare_database
from tenant_service.server import build_directory
from tenant_service.servicer import deletion_to_proto, tenant_to_proto
from tenant_service.tenants import Tenant, TenantDeletion, TenantDirectory, tenant_from_seed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description="Keel: real-time platform services.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run a Keel process until SIGTERM")
    serve_cmd.add_argument("process", choices=PROCESSES)
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="gateway and bridge only: run N worker processes sharing the gRPC or WebSocket"
        " port (SO_REUSEPORT), to use N cores; worker i serves /metrics on the port of"
        " KEEL_METRICS_ADDR + i; SIGTERM drains every worker; a worker that dies is"
        " restarted (default 1: this process serves alone)",
    )

    commands.add_parser("migrate", help="apply database migrations and exit")

    doctor_cmd = commands.add_parser(
        "doctor", help="check that this configuration can run Keel; exit 1 on a failure"
    )
    doctor_cmd.add_argument("process", nargs="?", choices=PROCESSES)

    tenants = commands.add_parser("tenants", help="administer tenants (on the database directly)")
    tenant_cmds = tenants.add_subparsers(dest="tenant_command", required=True)
    create = tenant_cmds.add_parser("create", help="create a tenant; prints its one-time secret")
    create.add_argument("name")
    create.add_argument("--permission", action="append", default=[], metavar="SCOPE")
    create.add_argument("--client-id", default="")
    create.add_argument("--rate-limit", type=int, default=0, metavar="RPS")
    create.add_argument("--burst", type=int, default=0)
    create.add_argument("--origin", action="append", default=[], metavar="URL")
    create.add_argument("--require-origin", action=argparse.BooleanOptionalAction, default=False)
    create.add_argument("--metadata", type=_json_object, default={}, metavar="JSON")
    _add_update_parser(tenant_cmds)
    tenant_cmds.add_parser("list", help="list every tenant")
    for name, text in (
        ("get", "show one tenant"),
        ("rotate-secret", "replace a tenant's secret; prints the new one"),
        ("delete", "delete a tenant (its data is purged in the background)"),
        ("deletion", "show how the deletion of a tenant goes: state, rows purged by table"),
    ):
        tenant_cmds.add_parser(name, help=text).add_argument("tenant_id")
    seed = tenant_cmds.add_parser("seed", help="create the tenants listed in a YAML/JSON file")
    seed.add_argument("file", type=Path)
    return parser


def _add_update_parser(tenant_cmds: Any) -> None:
    update = tenant_cmds.add_parser(
        "update", help="change the fields given of a tenant; the others keep their values"
    )
    update.add_argument("tenant_id")
    update.add_argument("--name")
    scopes = update.add_mutually_exclusive_group()
    scopes.add_argument(
        "--permission", action="append", metavar="SCOPE", help="repeatable; replaces the list"
    )
    scopes.add_argument("--no-permissions", action="store_true", help="remove every scope")
    origins = update.add_mutually_exclusive_group()
    origins.add_argument(
        "--origin", action="append", metavar="URL", help="repeatable; replaces the list"
    )
    origins.add_argument("--no-origins", action="store_true", help="remove every origin")
    update.add_argument("--require-origin", action=argparse.BooleanOptionalAction)
    update.add_argument("--rate-limit", type=int, metavar="RPS")
    update.add_argument("--burst", type=int)
    update.add_argument("--metadata", type=_json_object, metavar="JSON", help="replaces it")


def _json_object(text: str) -> dict[str, Any]:
    """The ``--metadata`` argument: a JSON object (argparse reports a bad one as usage)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, like \'{"plan": "pro"}\'')
    return value


def update_request(args: argparse.Namespace) -> tuple[Tenant, list[str]]:
    """The changes and the update mask that ``keel tenants update``'s options ask for."""
    changes: dict[str, Any] = {}
    mask: list[str] = []
    for given, path, attribute, value in (
        (args.name is not None, "name", "name", args.name),
        (args.permission or args.no_permissions, "permissions", "permissions", args.permission),
        (args.origin or args.no_origins, "allowed_origins", "allowed_origins", args.origin),
        (args.require_origin is not None, "require_origin", "require_origin", args.require_origin),
        (
            args.rate_limit is not None,
            "rate_limits.requests_per_second",
            "rate_limit_rps",
            args.rate_limit,
        ),
        (args.burst is not None, "rate_limits.burst", "rate_limit_burst", args.burst),
        (args.metadata is not None, "metadata", "metadata", args.metadata),
    ):
        if given:
            mask.append(path)
            changes[attribute] = tuple(value or ()) if isinstance(value, list | None) else value
    base: dict[str, Any] = {"id": TenantId(args.tenant_id), "name": "", "client_id": ""}
    return Tenant(**(base | changes)), mask


def proto_json(message: Message) -> dict[str, Any]:
    """``message`` exactly as the gRPC API's JSON shows it (``grpcurl -emit-defaults``):
    proto field names in declaration order, every field, map and Struct keys sorted,
    RFC 3339 times in UTC, integral numbers without a fraction."""
    shown = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return cast(dict[str, Any], _as_grpcurl_shows(cast(Descriptor, message.DESCRIPTOR), shown))


_JSON_VALUES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


def _as_grpcurl_shows(descriptor: Descriptor, shown: Any) -> Any:
    if descriptor.full_name in _JSON_VALUES:
        return _sorted_json(shown)
    if not isinstance(shown, dict):  # a well-known type shown as a string (a Timestamp)
        return shown
    ordered: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in shown:
            continue
        value, kind = shown[field.name], field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            entry = kind.fields_by_name["value"].message_type
            value = {
                key: _as_grpcurl_shows(entry, item) if entry else item
                for key, item in sorted(value.items())
            }
        elif kind is not None and isinstance(value, list):
            value = [_as_grpcurl_shows(kind, item) for item in value]
        elif kind is not None:
            value = _as_grpcurl_shows(kind, value)
        ordered[field.name] = value
    return ordered


def _sorted_json(value: Any) -> Any:
    # A Struct holds every number as a double; Go's JSON (grpcurl) prints 5.0 as 5.
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {key: _sorted_json(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [_sorted_json(item) for item in value]
    return value


def tenant_json(tenant: Tenant, secret: str | None = None) -> dict[str, Any]:
    """A tenant as the CLI prints it: :func:`proto_json` of the API's ``Tenant``, plus the
    ``client_secret`` when one is shown."""
    out = proto_json(tenant_to_proto(tenant))
    if secret is not None:
        out["client_secret"] = secret
    return out


def deletion_json(deletion: TenantDeletion) -> dict[str, Any]:
    """A tenant's deletion as the CLI prints it: exactly as the gRPC API's JSON shows it."""
    return proto_json(deletion_to_proto(deletion))


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
                    require_origin=args.require_origin,
                    metadata=args.metadata,
                )
            )
            return tenant_json(tenant, secret)
        if command == "update":
            changes, mask = update_request(args)
            result = tenant_json(await directory.update(args.tenant_id, changes, mask))
            _warn_without_shared_bus(settings)
            return result
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
            deletion = await directory.delete(args.tenant_id)
            _warn_without_shared_bus(settings)
            print(
                "note: a running `keel serve all` or `keel serve tenant-service` purges the"
                f" tenant's data; follow it with `keel tenants deletion {deletion.tenant_id}`",
                file=sys.stderr,
            )
            return deletion_json(deletion)
        if command == "deletion":
            return deletion_json(await directory.deletion(args.tenant_id))
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
    if (
        args.command == "tenants"
        and args.tenant_command == "update"
        and not update_request(args)[1]
    ):
        print(
            "keel tenants update: give at least one field to change"
            " (see keel tenants update --help)",
            file=sys.stderr,
        )
        return 2
    if args.command == "doctor":  # reads the environment itself, bad values included
        configure_logging("ERROR")
        from keel_app import doctor

        return doctor.run(dict(os.environ), args.process)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level if args.command == "serve" else "WARNING")
    try:
        if args.command == "serve":
            return _serve(args.process, args.workers, settings)
        if args.command == "migrate":
            print("\n".join(asyncio.run(_migrate(settings))))
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


def _serve(process: str, workers: int, settings: Settings) -> int:
    """``keel serve process [--workers N]``: this process serves, or supervises N workers
    (:mod:`keel_app.workers`); a worker serves with its own settings and log label."""
    index = worker_index()
    if index is None:
        check_workers(process, workers, settings)
        if workers > 1:
            return asyncio.run(supervise(process, workers, settings))
    else:
        settings = worker_settings(settings, index)
        label_logs(index)
    tracing.configure(process)  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set
    from keel_app.processes import serve

    asyncio.run(serve(process, settings, reuse_port=index is not None))
    return 0


async def _migrate(settings: Settings, *, wait: float = 10.0) -> list[str]:
    """``keel migrate``: create the database when it does not exist (PostgreSQL), apply
    the pending migrations; returns the report, one line per thing done."""
    engine = create_engine(settings.database_url)
    report = []
    try:
        problem = await check(engine)
        if problem is not None and problem.missing_database:
            if await create_database(settings.database_url):
                report.append(f'created the database "{engine.url.database}"')
        deadline = asyncio.get_running_loop().time() + wait
        report += [f"applied {migration}" for migration in await prepare_database(engine, deadline)]
    finally:
        await engine.dispose()
    report.append(f"database schema is up to date at {engine.url.render_as_string()}")
    return report


if __name__ == "__main__":
    sys.exit(main())
