"""The server interceptor every Keel service runs behind.

For each RPC of a Keel API it: takes or makes a request id (metadata
``x-request-id``, echoed back in trailing metadata and written into every log
line), authenticates the caller according to the method's :class:`MethodPolicy`,
applies the tenant's rate limit, refuses bad requests (below), maps errors to
statuses (one place: :func:`service_kit.errors.to_rpc_status`), and records
metrics and an access log line. Health and reflection pass through untouched. When
tracing is on, the gRPC instrumentation's server span wraps all of it.

No handler sees a request that is not well-formed protobuf or that breaks a
bound its proto declares (:mod:`service_kit.bounds`): the method's request
deserializer is wrapped so that neither ends as grpc's INTERNAL "Exception
deserializing request!"; after authentication such a request is answered
INVALID_ARGUMENT (with a BadRequest naming each field out of bounds). In a
request stream, the first such message ends the call the same way, even if
the handler swallowed the error. Page tokens made during a call are bound to
its method and tenant (:data:`service_kit.validation.page_token_scope_var`).

Every call pays for this, so the per-call work is kept small: a method's wrapped
handler is built once and reused while the server hands out the same handler for
it, the metric series of a method are looked up once (not through ``labels()`` on
every call), and the access log line of a success is only built when DEBUG is on.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from google.protobuf import descriptor_pool
from grpc_status import rpc_status

from service_kit import tracing
from service_kit.auth import (
    Authenticator,
    TenantContext,
    bearer_token,
    credentials_from_metadata,
    current_tenant_var,
    require_scope,
)
from service_kit.bounds import RequestBounds, refusal
from service_kit.db import database_unavailable
from service_kit.errors import (
    InvalidArgument,
    KeelError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    internal_status,
    to_rpc_status,
)
from service_kit.logs import request_id_var
from service_kit.metrics import RPC_HANDLED, RPC_IN_FLIGHT, RPC_LATENCY, STREAM_DURATION
from service_kit.ratelimit import RateLimiter
from service_kit.validation import page_token_scope_var

log = logging.getLogger("keel.rpc")


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """Who may call a method: anyone, the operator, or a tenant holding ``scope``."""

    kind: Literal["public", "admin", "peer", "tenant"]
    scope: str | None = None


#: Metadata with which an operator-token caller acts for one tenant (used by the bridge).
ACTING_FOR_TENANT = "x-keel-tenant-id"

PUBLIC = MethodPolicy("public")
ADMIN = MethodPolicy("admin")
#: Keel's own processes (the bridge): the peer token (KEEL_PEER_TOKEN) or the operator token.
PEER = MethodPolicy("peer")


def tenant_scope(scope: str) -> MethodPolicy:
    """A method a tenant may call when it holds ``scope`` (``chat:read``, ``upload:*`` …)."""
    return MethodPolicy("tenant", scope)


#: What a client that sent bytes that are not a request of the method's type is told.
MALFORMED_REQUEST = "the request is not a well-formed protobuf message of this method's type"


class _Refused:
    """What the guarded request deserializer yields instead of a request no handler may see."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _guarded(parse: Callable[[bytes], Any], bounds: RequestBounds | None) -> Callable[[bytes], Any]:
    """``parse`` that never raises: malformed bytes, and a request out of its ``bounds``,
    become a :class:`_Refused` (grpc would answer INTERNAL for an exception here)."""

    def deserialize(raw: bytes) -> Any:
        try:
            request = parse(raw)
        except Exception:  # DecodeError, or anything a parser raises on hostile input
            return _Refused(InvalidArgument(MALFORMED_REQUEST))
        if bounds is not None:
            violations = bounds.violations(request, encoded_size=len(raw))
            if violations:
                return _Refused(refusal(violations))
        return request

    return deserialize


async def _checked(requests: AsyncIterator[Any], refused: list[InvalidArgument]) -> Any:
    """The messages of a request stream, raising at the first refused one (and noting it
    in ``refused``, so the call fails even if the handler swallows the error)."""
    async for request in requests:
        if type(request) is _Refused:
            refused.append(request.error)
            raise request.error
        yield request


def _request_bounds(methods: Iterable[str]) -> dict[str, RequestBounds]:
    """The compiled bounds of each method's request type (``/pkg.Service/Method``)."""
    pool = descriptor_pool.Default()
    compiled: dict[str, RequestBounds] = {}
    for method in methods:
        try:
            found = pool.FindMethodByName(method[1:].replace("/", "."))
        except KeyError:  # not a generated method; its requests are still parsed safely
            continue
        compiled[method] = RequestBounds(found.input_type)
    return compiled


class _Rpc:
    __slots__ = ("code", "tenant")

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.tenant: TenantContext | None = None


class KeelInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authentication, rate limits, error mapping, metrics and logs for Keel's RPCs."""

    def __init__(
        self,
        *,
        policies: Mapping[str, MethodPolicy],
        authenticator: Authenticator | None,
        rate_limiter: RateLimiter,
        admin_token: str | None,
        peer_token: str | None = None,
    ) -> None:
        self._policies = policies
        self._authenticator = authenticator
        self._rate_limiter = rate_limiter
        self._admin_token = admin_token
        self._peer_token = peer_token
        self._bounds = _request_bounds(policies)
        #: Per method: the handler the server gave and the wrapped one made of it.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        #: The gRPC instrumentation when tracing is on (:mod:`service_kit.tracing`): its
        #: server span wraps all this interceptor does, so the access log line is in it.
        self._instrumentation = tracing.server_instrumentation()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._instrumentation is None:
            return await self._intercept(continuation, details)
        traced: grpc.RpcMethodHandler = await self._instrumentation.intercept_service(
            lambda inner: self._intercept(continuation, inner), details
        )
        return traced

    async def _intercept(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        policy = self._policies.get(method)
        if handler is None or policy is None:
            return handler
        # The wrapped handler keeps no state of a call: one per method serves them all.
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method, policy)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler, method: str, policy: MethodPolicy
    ) -> grpc.RpcMethodHandler:
        service, _, name = method[1:].rpartition("/")
        rpc = self._rpc
        parse = handler.request_deserializer
        kwargs = {
            "request_deserializer": _guarded(parse, self._bounds.get(method)) if parse else None,
            "response_serializer": handler.response_serializer,
        }
        streamed = bool(handler.stream_unary or handler.stream_stream)

        def admit(request: Any, refused: list[InvalidArgument]) -> Any:
            """The request the handler gets; raises the refusal of a refused one."""
            if streamed:
                return _checked(request, refused)
            if type(request) is _Refused:
                raise request.error
            return request

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with rpc(service, name, policy, context):
                    refused: list[InvalidArgument] = []
                    result = inner(admit(request, refused), context)
                    result = await result if inspect.isawaitable(result) else result
                    if refused:
                        raise refused[0]
                    return result

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return make(unary_response, **kwargs)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with rpc(service, name, policy, context, streaming=True):
                refused: list[InvalidArgument] = []
                produced = inner_stream(admit(request, refused), context)
                if inspect.isawaitable(produced):  # a handler that writes with context.write
                    await produced
                else:
                    async for item in produced:
                        yield item
                if refused:
                    raise refused[0]

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make(stream_response, **kwargs)

    @asynccontextmanager
    async def _rpc(
        self,
        service: str,
        name: str,
        policy: MethodPolicy,
        context: grpc.aio.ServicerContext,
        *,
        streaming: bool = False,
    ) -> AsyncIterator[None]:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        request_id = _request_id(metadata)
        rid_token = request_id_var.set(request_id)
        tenant_token = scope_token = None
        rpc = _Rpc()
        started = time.perf_counter()
        in_flight = _in_flight(service)
        in_flight.inc()
        try:
            await self._authorize(policy, metadata, rpc)
            tenant_token = current_tenant_var.set(rpc.tenant)
            scope_token = page_token_scope_var.set(
                f"/{service}/{name}:{rpc.tenant.tenant_id if rpc.tenant else ''}"
            )
            yield
            context.set_trailing_metadata((("x-request-id", request_id),))
        except NotImplementedError:
            rpc.code = grpc.StatusCode.UNIMPLEMENTED
            await context.abort(
                rpc.code,
                f"{service}/{name} is not implemented yet",
                trailing_metadata=(("x-request-id", request_id),),
            )
        except grpc.aio.AbortError:  # the servicer aborted by itself
            rpc.code = _status_code(context.code())
            raise
        except Exception as exc:
            rpc.code, status = failure_status(exc, service, name, request_id)
            await _abort(context, status, request_id)
        except BaseException:
            rpc.code = grpc.StatusCode.CANCELLED
            raise
        finally:
            in_flight.dec()
            record_rpc(service, name, rpc.code, started, rpc.tenant, streaming=streaming)
            # Each RPC runs in a task of its own; a stream closed by its client is finalized
            # in another context, where these tokens cannot be reset (and need not be).
            with contextlib.suppress(ValueError):
                if scope_token is not None:
                    page_token_scope_var.reset(scope_token)
                if tenant_token is not None:
                    current_tenant_var.reset(tenant_token)
                request_id_var.reset(rid_token)

    async def _authorize(
        self, policy: MethodPolicy, metadata: Mapping[str, str], rpc: _Rpc
    ) -> None:
        """Check the caller against ``policy``; sets ``rpc.tenant`` as soon as it is known."""
        if policy.kind == "public":
            return
        if policy.kind == "admin":
            self._check_admin(metadata)
            return
        if policy.kind == "peer":
            self._check_peer(metadata)
            return
        if self._authenticator is None:
            raise Unauthenticated("tenant authentication is not configured in this process")
        acting_for = metadata.get(ACTING_FOR_TENANT)
        if acting_for:
            # A trusted Keel process (the bridge) calls for a tenant with the peer token.
            self._check_peer(metadata)
            tenant = await self._authenticator.tenant_by_id(acting_for)
        else:
            tenant = await self._authenticator.authenticate(credentials_from_metadata(metadata))
        rpc.tenant = tenant
        await admit_tenant(tenant, policy.scope, self._rate_limiter)

    def _check_peer(self, metadata: Mapping[str, str]) -> None:
        """Accept the peer token (the bridge's) or the operator token."""
        token = bearer_token(metadata)
        if token is not None and self._peer_token is not None:
            if hmac.compare_digest(token.encode(), self._peer_token.encode()):
                return
        self._check_admin(metadata)

    def _check_admin(self, metadata: Mapping[str, str]) -> None:
        if self._admin_token is None:
            raise PermissionDenied(
                "tenant administration over gRPC is disabled in this process:"
                " set KEEL_ADMIN_TOKEN, or use the `keel tenants` command"
            )
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated(
                "this call needs the operator token:"
                " send metadata authorization: Bearer <KEEL_ADMIN_TOKEN>"
            )
        if not hmac.compare_digest(token.encode(), self._admin_token.encode()):
            raise Unauthenticated("wrong operator token")


def record_rpc(
    service: str,
    name: str,
    code: grpc.StatusCode,
    started: float,
    tenant: TenantContext | None,
    *,
    streaming: bool = False,
) -> None:
    """Count a call that began at ``started`` (``time.perf_counter()``) and ended with
    ``code`` in the metrics, and write its access log line. Every RPC is counted; the log
    line costs CPU on the hot path, so successes are logged at DEBUG and failures at INFO."""
    elapsed = time.perf_counter() - started
    handled, duration = _series(service, name, code, streaming)
    handled.inc()
    duration.observe(elapsed)
    level = logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level,
            "rpc",
            extra={
                "method": f"{service}/{name}",
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 3),
                "tenant_id": tenant.tenant_id if tenant else None,
            },
        )


#: The metric series of each (service, method, code, streaming) and each service's
#: in-flight gauge, as ``labels()`` returns them (the same objects every time: it is
#: only the lookup, a lock and a tuple per call, that these spare).
_SERIES: dict[tuple[str, str, grpc.StatusCode, bool], tuple[Any, Any]] = {}
_IN_FLIGHT: dict[str, Any] = {}


def _series(service: str, name: str, code: grpc.StatusCode, streaming: bool) -> tuple[Any, Any]:
    """The handled-calls counter and the duration histogram of one method and outcome."""
    key = (service, name, code, streaming)
    found = _SERIES.get(key)
    if found is None:
        duration = STREAM_DURATION if streaming else RPC_LATENCY
        found = _SERIES[key] = (
            RPC_HANDLED.labels(service, name, code.name),
            duration.labels(service, name),
        )
    return found


def _in_flight(service: str) -> Any:
    found = _IN_FLIGHT.get(service)
    if found is None:
        found = _IN_FLIGHT[service] = RPC_IN_FLIGHT.labels(service)
    return found


async def admit_tenant(tenant: TenantContext, scope: str | None, rate_limiter: RateLimiter) -> None:
    """Refuse a call of ``tenant`` unless it holds ``scope`` and is within its rate limit
    (a tenant's calls and the sends a bridge makes for it on its stream share one bucket)."""
    if scope is not None:
        require_scope(tenant, scope)
    if tenant.rate_limit_rps > 0:
        burst = max(tenant.rate_limit_burst, 1)
        wait = await rate_limiter.acquire(
            f"tenant:{tenant.tenant_id}", tenant.rate_limit_rps, burst
        )
        if wait > 0:
            raise ResourceExhausted(
                f"tenant {tenant.name!r} is over its rate limit of"
                f" {tenant.rate_limit_rps} requests/s (burst {burst}); retry in {wait:.3f}s",
                retry_after=wait,
            )


def failure_status(
    exc: Exception, service: str, name: str, request_id: str
) -> tuple[grpc.StatusCode, Any]:
    """The code and ``google.rpc.Status`` a call of ``service/name`` that raised ``exc``
    ends with, logged as every call's failure is: a KeelError's own status, UNAVAILABLE
    with a retry delay for a database outage, otherwise INTERNAL naming ``request_id``
    (the bug is logged with its traceback; call this in the ``except`` block)."""
    if isinstance(exc, KeelError):
        return exc.code, to_rpc_status(exc)
    unavailable = database_unavailable(exc)
    if unavailable is not None:
        log.warning("database unavailable", extra={"error": str(exc)[:300]})
        return unavailable.code, to_rpc_status(unavailable)
    log.exception("unexpected error", extra={"method": f"{service}/{name}"})
    return grpc.StatusCode.INTERNAL, internal_status(request_id)


def _status_code(code: Any) -> grpc.StatusCode:
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN


def _request_id(metadata: Mapping[str, str]) -> str:
    given = metadata.get("x-request-id", "")
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return secrets.token_hex(16)  # 32 random hex digits, as uuid4().hex, at a third of the cost


async def _abort(context: grpc.aio.ServicerContext, status: Any, request_id: str) -> None:
    wire = rpc_status.to_status(status)
    await context.abort(
        wire.code,
        wire.details,
        trailing_metadata=(*wire.trailing_metadata, ("x-request-id", request_id)),
    )
