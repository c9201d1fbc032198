"""Who may call the worker: bearer tokens with two roles, checked before any handler runs.

The controller keeps two random tokens per Dataset in the Secret `<dataset>-eddy-token` (keys `read` and
`admin`, eddy/wire.py) and mounts it into the worker pods as files. A worker that has tokens wants
`Authorization: Bearer <token>` on every `/v1/` request:

- the read token (sidecars) opens `GET /v1/block`, `GET /v1/meta/{name}`, `GET /v1/stats`;
- the admin token (preloader, controller) opens every `/v1/` request, including `POST /v1/warm`,
  `PUT /v1/meta/{name}` and `DELETE /v1/blocks`.

No header or an unknown token: 401; the read token on an admin request: 403. Tokens are compared in
constant time (`hmac.compare_digest`) and never logged. `/healthz`, `/readyz` and `/metrics` stay open
(kubelet probes and scrapers; they reveal no data). A worker without tokens (local mode, nothing
configured) serves everyone and says so in its log at start.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from eddy.wire import AUTH_HEADER, ERR_FORBIDDEN, ERR_UNAUTHORIZED, TOKEN_ADMIN_KEY, TOKEN_READ_KEY

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
_READ_METHODS = ("GET", "HEAD")


class TokenError(ValueError):
    """A token file is unreadable or too short to be a secret."""


@dataclass(frozen=True)
class Tokens:
    """The worker's accepted tokens (as bytes, for `compare_digest`); `repr` never shows them."""

    read: bytes | None = field(default=None, repr=False)
    admin: bytes | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.read is not None or self.admin is not None

    def role(self, header: str | None) -> str | None:
        """"admin", "read", or None for a missing, malformed or unknown token."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        given = value.strip().encode("utf-8", "surrogateescape")
        # Both comparisons always run, so the time taken says nothing about which one matched.
        is_admin = self.admin is not None and hmac.compare_digest(given, self.admin)
        is_read = self.read is not None and hmac.compare_digest(given, self.read)
        return "admin" if is_admin else "read" if is_read else None


def read_token_file(path: Path) -> bytes:
    """A token from a mounted Secret file (surrounding whitespace dropped)."""
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise TokenError(f"cannot read the token file {path}: {exc.strerror}") from None
    if len(value) < MIN_TOKEN_CHARS:
        raise TokenError(f"the token in {path} is shorter than {MIN_TOKEN_CHARS} characters")
    return value


def load_tokens(directory: Path | None) -> Tokens:
    """The tokens in `<directory>/read` and `<directory>/admin` (either may be absent); none without a
    directory."""
    if directory is None:
        return Tokens()
    if not directory.is_dir():
        raise TokenError(f"the token directory {directory} does not exist")
    found = {
        key: read_token_file(directory / key)
        for key in (TOKEN_READ_KEY, TOKEN_ADMIN_KEY)
        if (directory / key).exists()
    }
    if not found:
        raise TokenError(f"the token directory {directory} holds neither {TOKEN_READ_KEY!r} nor "
                         f"{TOKEN_ADMIN_KEY!r}")
    return Tokens(read=found.get(TOKEN_READ_KEY), admin=found.get(TOKEN_ADMIN_KEY))


def needs_admin(method: str, path: str) -> bool:
    """Every `/v1/` request but the reads (blocks, meta, stats) is an admin request."""
    return method not in _READ_METHODS


def auth_middleware(
    tokens: Tokens, deny: Callable[[int, str, str], web.StreamResponse]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware enforcing `tokens` on `/v1/` paths; `deny(status, code, message)` builds the
    error response (the server's JSON error shape)."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not tokens.enabled or not request.path.startswith("/v1/"):
            return await handler(request)
        role = tokens.role(request.headers.get(AUTH_HEADER))
        if role is None:
            return deny(401, ERR_UNAUTHORIZED, "a valid 'Authorization: Bearer <token>' header is required")
        if role != "admin" and needs_admin(request.method, request.path):
            return deny(403, ERR_FORBIDDEN,
                        f"{request.method} {request.path} needs the admin token (this is the read token)")
        return await handler(request)

    return check
