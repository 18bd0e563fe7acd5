"""Cross-origin access to the file endpoints: browsers upload and download from the app's
own origin, which is never the file service's.

Credentials travel in headers (``Authorization``, ``Upload-Token``) or in the URL, never
in cookies, so ``Access-Control-Allow-Credentials`` is not needed and ``*`` is a safe
default: a page of another origin gains nothing it could not do with the token itself.
Every response carries the headers, errors included, so a browser script can read the
status of a refused request (a tus client needs 409/410/460 to decide what to do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import hdrs, web

#: Request headers a browser may send (a preflight asks for them by name).
ALLOW_HEADERS = (
    "Authorization",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Checksum",
    "Upload-Token",
    "Content-Type",
    "X-HTTP-Method-Override",
    "Range",
    "If-Range",
)
#: Response headers a browser script may read.
EXPOSE_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Content-Range",
    "Content-Disposition",
    "Content-Length",
    "Accept-Ranges",
    "ETag",
)
ALLOW_METHODS = ("GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS")
#: How long a browser may reuse a preflight's answer (seconds).
PREFLIGHT_MAX_AGE = 86_400


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which origins may call; ``*`` among them allows every origin."""

    origins: Sequence[str]

    def allowed_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``."""
        if origin is None:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare`` hook: the CORS headers of every response."""
        if "*" not in self.origins:
            response.headers.add(hdrs.VARY, "Origin")
        allowed = self.allowed_origin(request.headers.get(hdrs.ORIGIN))
        if allowed is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(EXPOSE_HEADERS)
        if request.method == hdrs.METH_OPTIONS:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ", ".join(ALLOW_METHODS)
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(ALLOW_HEADERS)
            response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(PREFLIGHT_MAX_AGE)
