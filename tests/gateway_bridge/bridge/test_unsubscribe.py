"""The one-click unsubscribe endpoint on the bridge's HTTP port
(``gateway_bridge.bridge.unsubscribe``, and ``http.read_request`` for the POST body):
what it answers without reaching a notification service. Applying a real token is
in ``test_notification_frames.py``, against the real notification service."""

from __future__ import annotations

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.http import MAX_BODY_BYTES
from tests.gateway_bridge.bridge.conftest import http_request

PATH = "/notifications/unsubscribe"
ONE_CLICK = (
    b"List-Unsubscribe=One-Click",
    (("Content-Type", "application/x-www-form-urlencoded"),),
)


async def test_get_shows_a_confirmation_form_and_changes_nothing(bridge: Bridge) -> None:
    answer = await http_request(bridge.port, "GET", f"{PATH}?token=abc.def&x=%3Cb%3E")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    # A form posting back to the very same URL (escaped), with the RFC 8058 field.
    assert f'<form method="post" action="{PATH}?token=abc.def&amp;x=%3Cb%3E">' in answer.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in answer.text


async def test_a_link_without_a_token_is_400(bridge: Bridge) -> None:
    for method in ("GET", "POST"):
        answer = await http_request(bridge.port, method, PATH)
        assert answer.status == 400 and "no token" in answer.text


async def test_a_one_click_post_on_a_bridge_without_a_notification_service_is_503(
    bridge: Bridge,
) -> None:
    body, headers = ONE_CLICK
    answer = await http_request(bridge.port, "POST", f"{PATH}?token=abc", body, headers)
    assert answer.status == 503
    assert "KEEL_NOTIFICATION_SERVICE_ADDR" in answer.text
    # The form's POST (an empty body) is the same request.
    assert (await http_request(bridge.port, "POST", f"{PATH}?token=abc")).status == 503


async def test_a_post_body_over_the_limit_is_413(bridge: Bridge) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    answer = await http_request(bridge.port, "POST", f"{PATH}?token=abc", body)
    assert answer.status == 413


async def test_other_methods_are_405(bridge: Bridge) -> None:
    answer = await http_request(bridge.port, "DELETE", f"{PATH}?token=abc")
    assert answer.status == 405 and answer.headers["allow"] == "GET, POST"


async def test_the_other_endpoints_answer_as_before_a_post_body_does_not_upset_them(
    bridge: Bridge,
) -> None:
    assert (await http_request(bridge.port, "GET", "/healthz")).text == "ok\n"
    assert (await http_request(bridge.port, "POST", "/healthz", b"a=1")).status == 200
    assert (await http_request(bridge.port, "GET", "/ws")).status == 426
