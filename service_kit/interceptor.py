"""What every Keel service's handlers run behind: Keel's checks, wrapped around each
method handler when the service registers it (:meth:`KeelHandlers.registering`).

For each RPC of a Keel API it: takes or makes a request id (metadata
``x-request-id``, echoed back in trailing metadata and written into every log
line), authenticates the caller according to the method's :class:`MethodPolicy`,
applies the tenant's rate limit, refuses bad requests (below), maps errors to
statuses (one place: :func:`service_kit.errors.to_rpc_status`), and records
metrics and an access log line. Health and reflection are not wrapped. When
tracing is on, the gRPC instrumentation's server span (a grpc.aio interceptor, the
only one) wraps all of it.

No handler sees a request that is not well-formed protobuf or that breaks a
bound its proto declares (:mod:`service_kit.bounds`): the method's request
deserializer is wrapped so that neither ends as grpc's INTERNAL "Exception
deserializing request!"; after authentication such a request is answered
INVALID_ARGUMENT (with a BadRequest naming each field out of bounds). In a
request stream, the first such message ends the call the same way, even if
the handler swallowed the error. Page tokens made during a call are bound to
its method and tenant (:data:`service_kit.validation.page_token_scope_var`).

Every call pays for this, so the per-call work is kept small: the handlers are wrapped
at registration rather than by a grpc.aio ``ServerInterceptor`` (whose machinery runs a
coroutine chain for every call, even for calls it leaves alone), a method's wrapped
handler is built once and reused while the service hands out the same handler for it,
the per-call steps are straight-line code rather than a context manager, a made request
id needs no system call, the metric series of a method are looked up once (not through
``labels()`` on every call), and the access log line of a success is only built when DEBUG is on.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import grpc
from google.protobuf import descriptor_pool
from grpc_status import rpc_status

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


class _Call:
    """One call's state, from its start to its metrics and access log line."""

    __slots__ = ("code", "metadata", "recorded", "request_id", "started", "tenant", "tokens")

    def __init__(self, metadata: dict[str, str]) -> None:
        self.code = grpc.StatusCode.OK
        self.tenant: TenantContext | None = None
        self.metadata = metadata
        self.request_id = _request_id(metadata)
        self.started = time.perf_counter()
        self.tokens: tuple[Any, ...] = ()
        self.recorded = False


class KeelHandlers:
    """Authentication, rate limits, error mapping, metrics and logs for Keel's RPCs: wraps
    the method handlers a service registers (:meth:`registering`), once each."""

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
        #: Per method: the handler the service gave and the wrapped one made of it.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def registering(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """What a service's ``register`` gets instead of ``server``: the handlers it adds
        (generic or registered) are wrapped before ``server`` gets them; everything
        else goes to ``server`` unchanged."""
        registrar: grpc.aio.Server = _Registrar(server, self)
        return registrar

    def wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        """The handler serving ``method`` (``/pkg.Service/Method``) behind Keel's checks;
        ``handler`` itself when it is None or the method has no policy (not a Keel API)."""
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
        begin, failed, finish = self._begin, self._failed, self._finish
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

        # The two wrappers below are the per-call path of every RPC: straight-line code
        # (no context manager) around the handler, the same steps in both.
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = begin(service, context)
                try:
                    await self._admit(service, name, policy, context, call)
                    refused: list[InvalidArgument] = []
                    result = inner(admit(request, refused), context)
                    result = await result if inspect.isawaitable(result) else result
                    if refused:
                        raise refused[0]
                    context.set_trailing_metadata((("x-request-id", call.request_id),))
                    return result
                except BaseException as exc:
                    await failed(service, name, context, call, exc, False)
                finally:
                    finish(service, name, call, False)

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return make(unary_response, **kwargs)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = begin(service, context)
            try:
                await self._admit(service, name, policy, context, call)
                refused: list[InvalidArgument] = []
                produced = inner_stream(admit(request, refused), context)
                if inspect.isawaitable(produced):  # a handler that writes with context.write
                    await produced
                else:
                    async for item in produced:
                        yield item
                if refused:
                    raise refused[0]
                context.set_trailing_metadata((("x-request-id", call.request_id),))
            except BaseException as exc:
                await failed(service, name, context, call, exc, True)
            finally:
                finish(service, name, call, True)

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make(stream_response, **kwargs)

    @staticmethod
    def _begin(service: str, context: grpc.aio.ServicerContext) -> _Call:
        """Start a call: its request id (set for the log lines), in the in-flight gauge."""
        call = _Call(dict(context.invocation_metadata() or ()))
        call.tokens = (request_id_var.set(call.request_id),)
        _in_flight(service).inc()
        return call

    async def _admit(
        self,
        service: str,
        name: str,
        policy: MethodPolicy,
        context: grpc.aio.ServicerContext,
        call: _Call,
    ) -> None:
        """Authorize the caller and set the call's tenant and page-token scope."""
        await self._authorize(policy, call.metadata, call)
        tenant = call.tenant
        call.tokens = (
            *call.tokens,
            current_tenant_var.set(tenant),
            page_token_scope_var.set(f"/{service}/{name}:{tenant.tenant_id if tenant else ''}"),
        )

    @staticmethod
    async def _failed(
        service: str,
        name: str,
        context: grpc.aio.ServicerContext,
        call: _Call,
        exc: BaseException,
        streaming: bool,
    ) -> NoReturn:
        """End a call that raised ``exc`` with its status (call in the ``except`` block).

        The call is counted and logged before its status goes out (``abort`` sends it), so
        a caller that got the error finds the call in the metrics and the log."""
        if isinstance(exc, NotImplementedError):
            call.code = grpc.StatusCode.UNIMPLEMENTED
            _record(service, name, call, streaming)
            await context.abort(
                call.code,
                f"{service}/{name} is not implemented yet",
                trailing_metadata=(("x-request-id", call.request_id),),
            )
        if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted by itself
            call.code = _status_code(context.code())
            raise exc
        if isinstance(exc, Exception):
            call.code, status = failure_status(exc, service, name, call.request_id)
            _record(service, name, call, streaming)
            await _abort(context, status, call.request_id)
        call.code = grpc.StatusCode.CANCELLED
        raise exc

    @staticmethod
    def _finish(service: str, name: str, call: _Call, streaming: bool) -> None:
        _record(service, name, call, streaming)
        # Each RPC runs in a task of its own; a stream closed by its client is finalized
        # in another context, where these tokens cannot be reset (and need not be).
        with contextlib.suppress(ValueError):
            for token in reversed(call.tokens):
                token.var.reset(token)

    async def _authorize(
        self, policy: MethodPolicy, metadata: Mapping[str, str], call: _Call
    ) -> None:
        """Check the caller against ``policy``; sets ``call.tenant`` as soon as it is known."""
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
        call.tenant = tenant
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


def _record(service: str, name: str, call: _Call, streaming: bool) -> None:
    """Count and log ``call`` (once: a failed call is recorded before its status goes out)."""
    if not call.recorded:
        call.recorded = True
        _in_flight(service).dec()
        record_rpc(service, name, call.code, call.started, call.tenant, streaming=streaming)


class _Registrar:
    """A server as a service's ``register`` sees it (:meth:`KeelHandlers.registering`)."""

    def __init__(self, server: grpc.aio.Server, handlers: KeelHandlers) -> None:
        self._server = server
        self._handlers = handlers

    def add_generic_rpc_handlers(self, generic: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(handler, self._handlers) for handler in generic)
        )

    def add_registered_method_handlers(
        self, service: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service,
            {
                name: self._handlers.wrap(f"/{service}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A service's generic handler whose method handlers come out wrapped (made once per
    method: :meth:`KeelHandlers.wrap`)."""

    def __init__(self, inner: grpc.GenericRpcHandler, handlers: KeelHandlers) -> None:
        self._inner = inner
        self._wrap = handlers.wrap

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        found: grpc.RpcMethodHandler | None = self._wrap(
            details.method, self._inner.service(details)
        )
        return found


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
    # 32 hex digits, unique without a system call: the process's random half, then a count.
    return f"{_ids.prefix}{next(_ids.count):016x}"


class _RequestIds:
    """Where made request ids come from: 16 random hex digits per process (drawn again in a
    forked child), then a counter."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.count = itertools.count()


_ids = _RequestIds()
os.register_at_fork(after_in_child=_ids.renew)


async def _abort(context: grpc.aio.ServicerContext, status: Any, request_id: str) -> None:
    wire = rpc_status.to_status(status)
    await context.abort(
        wire.code,
        wire.details,
        trailing_metadata=(*wire.trailing_metadata, ("x-request-id", request_id)),
    )
