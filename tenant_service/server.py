"""Wiring of the tenant service: store, directory, servicer, the spec the bootstrap serves,
and the job handlers its process runs (the purge of deleted tenants)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from keel.tenants.v1 import tenants_pb2_grpc

from service_kit.interceptor import ADMIN, PEER, PUBLIC
from service_kit.jobs import JobHandler
from service_kit.purge import TENANT_PURGE_JOB, tenant_purge_handler
from service_kit.server import Runtime, ServiceSpec
from tenant_service.servicer import TenantServicer
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import TenantDirectory, TenantPolicy

SERVICE_NAME = "keel.tenants.v1.TenantService"


def build_directory(runtime: Runtime) -> TenantDirectory:
    """The tenant directory over the runtime's database, bus and rate limiter."""
    settings = runtime.settings
    return TenantDirectory(
        SqlTenantStore(runtime.engine),
        bus=runtime.bus,
        rate_limiter=runtime.rate_limiter,
        policy=TenantPolicy(
            secret_hash_cost=settings.secret_hash_cost,
            validate_failures_per_minute=settings.validate_failures_per_minute,
        ),
    )


@dataclass(frozen=True)
class TenantService:
    """The built service: its spec for the server, the directory for in-process callers,
    and the handlers of the jobs its process runs (for a job worker,
    :class:`~service_kit.job_worker.JobWorker`)."""

    spec: ServiceSpec
    directory: TenantDirectory
    job_handlers: Mapping[str, JobHandler]


def build(runtime: Runtime) -> TenantService:
    """Everything needed to serve ``keel.tenants.v1.TenantService`` in this process.

    Administration needs the operator token; ValidateCredentials is public
    (it is itself the check of a tenant's credentials).
    """
    directory = build_directory(runtime)
    servicer = TenantServicer(directory)

    def register(server: grpc.aio.Server) -> None:
        tenants_pb2_grpc.add_TenantServiceServicer_to_server(servicer, server)

    spec = ServiceSpec(
        name=SERVICE_NAME,
        register=register,
        default_policy=ADMIN,
        # The bridge looks tenants up (allowed origins) with the peer token.
        policies={"ValidateCredentials": PUBLIC, "GetTenant": PEER},
    )
    handlers = {TENANT_PURGE_JOB: tenant_purge_handler(runtime.engine)}
    return TenantService(spec, directory, handlers)
