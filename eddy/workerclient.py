"""The HTTP client of the cache workers (eddy/wire.py's API), used by the sidecar and the preloader.

One `aiohttp.ClientSession` with a keep-alive pool serves every worker URL. Every call takes a
per-request timeout. Failures are typed so callers can decide without parsing text:

- `WorkerUnavailable`: the worker could not be reached, timed out, answered 5xx (its object store
  failed too: the message says so), or sent a truncated body. A reader falls back to the store.
- `BlockGone` (404 `object_gone`): the object no longer exists.
- `BlockChanged` (409/412 `object_changed`): the object no longer has the block's ETag.
- `WorkerBadRequest`: any other 4xx (malformed reference, range out of bounds, unknown dataset/mount).

Authentication: a client sends `Authorization: Bearer <token>` when it has a token: the one passed, else
the file named by `$EDDY_WORKER_TOKEN_FILE`, else the mounted Secret's `admin` then `read` key under
`/etc/eddy/worker-token` (eddy/wire.py). 401/403 answers are `WorkerBadRequest` with `.status` set.

All derive from `WorkerError`, whose `.status` and `.code` carry the HTTP status and the JSON error
code. Whole-block reads are checked against the worker's `X-Eddy-Crc32c` header (cheap: CRC32C runs
at ~10 GB/s), so a corrupted transfer is never handed to a reader.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import google_crc32c

from eddy.blocks import BlockRef
from eddy.wire import (
    AUTH_HEADER,
    BLOCK_PATH,
    DATASET_PARAM,
    ERR_OBJECT_CHANGED,
    ERR_OBJECT_GONE,
    HEADER_CACHE,
    HEADER_CRC,
    HEADER_TIER,
    META_PATH,
    PURGE_PATH,
    STATS_PATH,
    TOKEN_ADMIN_KEY,
    TOKEN_DIR,
    TOKEN_FILE_ENV,
    TOKEN_READ_KEY,
    WARM_PATH,
    ref_to_json,
    ref_to_params,
)


class WorkerError(Exception):
    """A worker request failed; `.status` is the HTTP status (0 if none) and `.code` the error code."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class WorkerUnavailable(WorkerError):
    """Unreachable, timed out, 5xx, or a broken body: try another worker or the object store."""


class BlockGone(WorkerError):
    """The block's object no longer exists in the object store (404 object_gone)."""


class BlockChanged(WorkerError):
    """The block's object has another ETag now (409/412 object_changed)."""


class WorkerBadRequest(WorkerError):
    """The worker rejected the request (4xx): malformed reference, bad range, unknown dataset/mount."""


@dataclass(frozen=True)
class WarmResult:
    """The outcome of warming one block: `status` is "cached" (already there), "fetched" or "error"."""

    index: int  # position of the block in the request's list
    status: str
    tier: str = ""
    bytes: int = 0
    error: str = ""
    code: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "fetched")


@dataclass(frozen=True)
class BlockReply:
    """A block read with the worker's headers: whether it was a hit, and from which tier."""

    data: bytes
    cache: str  # "hit" | "miss"
    tier: str  # "MEM" | "SSD" | "HDD" | "" (served without being kept)


def default_token() -> str | None:
    """This process's worker token: `$EDDY_WORKER_TOKEN_FILE`'s file, else the mounted Secret's admin,
    then read key; None when there is none (the workers then must run without tokens)."""
    named = os.environ.get(TOKEN_FILE_ENV)
    keys = (TOKEN_ADMIN_KEY, TOKEN_READ_KEY)
    candidates = [Path(named)] if named else [Path(TOKEN_DIR) / key for key in keys]
    for path in candidates:
        try:
            value = path.read_text().strip()  # a few bytes, read once per client: not worth a thread
        except OSError:
            continue
        if value:
            return value
    return None


class WorkerClient:
    """Async client of any number of workers; create once, share, `await close()` at the end.

    `token`: the bearer token to send; None looks for one (`default_token()`), "" sends none.
    """

    def __init__(
        self,
        timeout: float = 30.0,
        max_connections: int = 64,
        *,
        connect_timeout: float = 5.0,
        dataset: str | None = None,
        verify_crc: bool = True,
        read_bufsize: int = 1 << 20,
        token: str | None = None,
    ) -> None:
        self._token = default_token() if token is None else token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.dataset = dataset
        self.verify_crc = verify_crc
        self.read_bufsize = read_bufsize
        self._session: aiohttp.ClientSession | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        """The headers that authenticate this client (empty without a token); never log them."""
        return {AUTH_HEADER: f"Bearer {self._token}"} if self._token else {}

    def __repr__(self) -> str:
        return f"WorkerClient(timeout={self.timeout}, dataset={self.dataset!r}, token={bool(self._token)})"

    # ----------------------------------------------------------------------------------- lifecycle
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_connections, keepalive_timeout=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                read_bufsize=self.read_bufsize,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
                headers=self.auth_headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _params(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        params = dict(extra or {})
        if self.dataset:
            params[DATASET_PARAM] = self.dataset
        return params

    def _timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.timeout if timeout is None else timeout, sock_connect=self.connect_timeout
        )

    # --------------------------------------------------------------------------------------- blocks
    async def get_block(
        self, url: str, ref: BlockRef, start: int = 0, end: int | None = None, *, timeout: float | None = None
    ) -> bytes:
        """Bytes `[start, end)` of the block (offsets inside the block; `end=None`: to its end)."""
        return (await self.get_block_reply(url, ref, start, end, timeout=timeout)).data

    async def get_block_reply(
        self, url: str, ref: BlockRef, start: int = 0, end: int | None = None, *, timeout: float | None = None
    ) -> BlockReply:
        """Like `get_block`, with the worker's cache/tier headers."""
        stop = ref.length if end is None else end
        if start < 0 or stop < start or stop > ref.length:
            raise ValueError(f"range [{start}, {stop}) is outside the {ref.length}-byte block")
        whole = start == 0 and stop == ref.length
        headers = {} if whole else {"Range": f"bytes={start}-{stop - 1}"}
        if stop == start and not whole:
            return BlockReply(b"", "", "")
        where = f"{url} block {ref.mount}:{ref.key}#{ref.index}"
        try:
            async with self._http().get(
                url + BLOCK_PATH, params=self._params(ref_to_params(ref)), headers=headers,
                timeout=self._timeout(timeout),
            ) as resp:
                if resp.status not in (200, 206):
                    raise await _error(resp, where)
                data = await resp.read()
                crc = resp.headers.get(HEADER_CRC, "")
                cache, tier = resp.headers.get(HEADER_CACHE, ""), resp.headers.get(HEADER_TIER, "")
                reply = BlockReply(data, cache, tier)
        except WorkerError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WorkerUnavailable(f"{where}: {_describe(exc)}") from None
        if len(data) != stop - start:
            raise WorkerUnavailable(f"{where}: short body, {len(data)} of {stop - start} bytes")
        if whole and self.verify_crc and crc and int(crc) != google_crc32c.value(data):
            raise WorkerUnavailable(f"{where}: CRC32C mismatch in transfer")
        return reply

    async def warm(
        self, url: str, refs: Sequence[BlockRef], *, timeout: float | None = None
    ) -> list[WarmResult]:
        """Ask a worker to cache blocks (idempotent); one result per block, in request order.

        The timeout covers the whole batch (the worker fetches misses from the store): size it.
        """
        body: dict[str, Any] = {"blocks": [ref_to_json(r) for r in refs]}
        if self.dataset:
            body[DATASET_PARAM] = self.dataset
        doc = await self._json("POST", url, WARM_PATH, f"{url} warm", json_body=body, timeout=timeout)
        results: list[WarmResult] = []
        for item in doc.get("results", []):
            results.append(WarmResult(
                index=int(item.get("index", len(results))),
                status=str(item.get("status", "error")),
                tier=str(item.get("tier") or ""),
                bytes=int(item.get("bytes") or 0),
                error=str(item.get("error") or ""),
                code=str(item.get("code") or ""),
            ))
        if len(results) != len(refs):
            raise WorkerUnavailable(f"{url} warm: {len(results)} results for {len(refs)} blocks")
        return results

    # ----------------------------------------------------------------------------------------- meta
    async def put_meta(self, url: str, name: str, data: bytes, *, timeout: float | None = None) -> None:
        await self._json("PUT", url, META_PATH.format(name=name), f"{url} meta {name!r}", data=data,
                         timeout=timeout)

    async def get_meta(self, url: str, name: str, *, timeout: float | None = None) -> bytes | None:
        """The blob, or None when the worker holds none of that name."""
        where = f"{url} meta {name!r}"
        try:
            async with self._http().get(
                url + META_PATH.format(name=name), params=self._params(), timeout=self._timeout(timeout)
            ) as resp:
                if resp.status == 404:
                    err = await _error(resp, where)
                    if err.code in ("not_found", ""):
                        return None
                    raise err
                if resp.status != 200:
                    raise await _error(resp, where)
                return await resp.read()
        except WorkerError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WorkerUnavailable(f"{where}: {_describe(exc)}") from None

    # -------------------------------------------------------------------------------------- control
    async def stats(
        self, url: str, *, timeout: float | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """The worker's `/v1/stats`; `token` overrides the client's (a client shared across datasets)."""
        return await self._json("GET", url, STATS_PATH, f"{url} stats", timeout=timeout, token=token)

    async def purge(self, url: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Drop every cached block of the dataset; returns `{"blocks": n, "bytes": n}` removed."""
        return await self._json("DELETE", url, PURGE_PATH, f"{url} purge", timeout=timeout)

    async def ready(self, url: str, *, timeout: float | None = 5.0) -> bool:
        """True when `/readyz` answers 200; False on any failure."""
        try:
            async with self._http().get(url + "/readyz", timeout=self._timeout(timeout)) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _json(
        self, method: str, url: str, path: str, where: str, *, json_body: Any = None,
        data: bytes | None = None, timeout: float | None = None, token: str | None = None,
    ) -> dict[str, Any]:
        headers = {AUTH_HEADER: f"Bearer {token}"} if token else None
        try:
            async with self._http().request(
                method, url + path, params=self._params(), json=json_body, data=data,
                timeout=self._timeout(timeout), headers=headers,
            ) as resp:
                if resp.status >= 300:
                    raise await _error(resp, where)
                raw = await resp.read()
        except WorkerError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WorkerUnavailable(f"{where}: {_describe(exc)}") from None
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise WorkerUnavailable(f"{where}: the worker's answer is not JSON") from None
        return doc if isinstance(doc, dict) else {"value": doc}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _error(resp: aiohttp.ClientResponse, where: str) -> WorkerError:
    """The typed error for a non-success answer, from its JSON body `{"error", "message"}`."""
    code, message = "", ""
    try:
        raw = await resp.read()
        doc = json.loads(raw) if raw else {}
        if isinstance(doc, dict):
            code = str(doc.get("error") or "")
            message = str(doc.get("message") or "")
    except (TimeoutError, ValueError, aiohttp.ClientError, OSError):
        pass
    text = f"{where}: HTTP {resp.status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    status = resp.status
    if status >= 500:
        return WorkerUnavailable(text, status=status, code=code)
    if code == ERR_OBJECT_GONE:
        return BlockGone(text, status=status, code=code)
    if code == ERR_OBJECT_CHANGED or status in (409, 412):
        return BlockChanged(text, status=status, code=code)
    if status == 429 or status == 408:
        return WorkerUnavailable(text, status=status, code=code)
    return WorkerBadRequest(text, status=status, code=code)
