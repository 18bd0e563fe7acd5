"""The one-click unsubscribe link of notification emails, served on the bridge's port.

Every notification email carries ``List-Unsubscribe: <…/notifications/unsubscribe?token=…>``
and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058). The token is signed
by the notification service and names the tenant, the user and the category.

- ``GET`` shows a page with a button and changes nothing: mail scanners and link
  previews follow links, and must not unsubscribe anyone.
- ``POST`` (the mail client's one-click request, body ``List-Unsubscribe=One-Click``,
  or the page's button) applies the token (``NotificationService.Unsubscribe``, with the
  peer token): 200 and a short page saying what was turned off; a malformed, forged or
  tampered token is 400; no notification service to ask (or it is unreachable) is 503.
"""

from __future__ import annotations

import html
import logging
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qs, urlsplit

import grpc
from websockets.http11 import Response

from gateway_bridge.bridge.http import HttpRequest, page
from gateway_bridge.bridge.notification_link import NotConfigured, NotificationLink

log = logging.getLogger(__name__)

UNSUBSCRIBE_PATH: Final = "/notifications/unsubscribe"

#: The token is a capability in the URL: keep it out of caches, referrers and frames.
_HEADERS: Final = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
)

_BAD_TOKEN: Final = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
_UNREACHABLE: Final = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def respond(request: HttpRequest, link: NotificationLink) -> Response:
    """The answer to a request for :data:`UNSUBSCRIBE_PATH` (see the module docstring)."""
    url = urlsplit(request.path)
    token = parse_qs(url.query).get("token", [""])[0]
    if not token:
        return _page(
            HTTPStatus.BAD_REQUEST, "This unsubscribe link is incomplete: it has no token."
        )
    if request.method == "GET":
        return _confirm(request.path)
    if request.method != "POST":
        return _page(HTTPStatus.METHOD_NOT_ALLOWED, "Use GET or POST.", allow=True)
    if request.body_too_long:
        return _page(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "The request body is too long.")
    try:
        answer = await link.unsubscribe(token)
    except NotConfigured as exc:
        return _page(HTTPStatus.SERVICE_UNAVAILABLE, f"Cannot unsubscribe here: {exc}.")
    except grpc.aio.AioRpcError as exc:
        if exc.code() in _BAD_TOKEN:
            return _page(
                HTTPStatus.BAD_REQUEST, f"This unsubscribe link is not valid: {exc.details()}"
            )
        if exc.code() not in _UNREACHABLE:
            log.warning(
                "unsubscribe failed",
                extra={"code": exc.code().name, "details": exc.details()},
            )
        return _page(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "The notification service cannot be reached right now; try again in a minute.",
        )
    return _page(
        HTTPStatus.OK,
        f"You are unsubscribed: no more “{answer.category}” emails will be sent to you.",
        title="Unsubscribed",
    )


def _confirm(action: str) -> Response:
    form = (
        f'<form method="post" action="{html.escape(action)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _html(HTTPStatus.OK, "Unsubscribe", "<p>Stop getting these emails?</p>" + form)


def _page(
    status: HTTPStatus, text: str, *, title: str = "Unsubscribe", allow: bool = False
) -> Response:
    return _html(status, title, f"<p>{html.escape(text)}</p>", allow=allow)


def _html(status: HTTPStatus, title: str, body: str, *, allow: bool = False) -> Response:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2430}"
        "main{max-width:28rem;margin:12vh auto;padding:2rem;background:#fff;"
        "border:1px solid #dde1e7;border-radius:8px}"
        "button{font:inherit;padding:.5rem 1.2rem;border:0;border-radius:6px;"
        "background:#2f6fde;color:#fff;cursor:pointer}"
        f"</style></head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>\n"
    )
    extra = _HEADERS + ((("Allow", "GET, POST"),) if allow else ())
    return page(
        status, document.encode(), "text/html; charset=utf-8", cache="no-store", extra=extra
    )
