"""The worker's error answers: every failure leaves as a JSON body `{"error": code, "message": text}`.

`HTTPError` is what a handler raises for a status of its own choosing; `error_middleware` answers it,
aiohttp's own 4xx, and every other exception as worker/errors.py's `describe` maps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from eddy.wire import ERR_BAD_REQUEST, ERR_NOT_FOUND, ERR_TOO_LARGE
from worker.errors import describe

log = logging.getLogger(__name__)

_STATUS_CODES = {404: ERR_NOT_FOUND, 405: "method_not_allowed", 413: ERR_TOO_LARGE}


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        return json_error(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, _STATUS_CODES.get(exc.status, ERR_BAD_REQUEST), exc.reason)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        status, code, message = describe(exc)
        if status == 500:
            log.exception("%s %s failed", request.method, request.path)
        return json_error(status, code, message)
