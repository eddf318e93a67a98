"""The Runa client: one aiohttp session, one GET per call, every answer classified.

It never retries on its own: retries are the scheduler's decision and pass the limiter again.
aiohttp's silent re-send of an idempotent request after a connection reset is switched off for
the same reason (LIBRARY-NOTES: that second GET would bypass the rate limit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from orderwatch.core.version import __version__
from orderwatch.polling.answers import Answer, Kind, classify, classify_list

MAX_BODY = 4 * 1024 * 1024
SWEEP_S = 0.25  # a request gives up at most this long after its timeout
QUICK_CONNECT_S = 0.001  # a connection that took less is not reported to the limiter


class _Deadlines:
    """Every request's timeout kept by one timer, not one each. aiohttp's own total timeout
    schedules and cancels a timer for every request (measurable loop time at dozens of
    requests in flight). Here a request's task is noted with its deadline, and while
    any is in flight one timer looks every SWEEP_S and cancels the tasks past theirs (so a
    request gives up between its timeout and SWEEP_S later). With none in flight, no timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        """Whether the sweep's timer is set (only while a request is in flight)."""
        return self._timer is not None

    def start(self, task: asyncio.Task[Any]) -> None:
        self._deadlines[task] = self._loop.time() + self._timeout_s
        if self._timer is None:
            self._timer = self._loop.call_later(SWEEP_S, self.sweep)

    def end(self, task: asyncio.Task[Any]) -> None:
        del self._deadlines[task]
        if task in self._expired:  # our cancel came out as something else (or was swallowed)
            self._expired.discard(task)
            task.uncancel()
        if not self._deadlines and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def timed_out(self, task: asyncio.Task[Any]) -> bool:
        """Whether the CancelledError `task` got is its timeout: True when this sweep cancelled
        it and nothing else did too (a stop's cancel still goes through, as with
        `asyncio.timeout`)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def sweep(self) -> None:
        """Cancel every request past its deadline (the timer calls this every SWEEP_S)."""
        now = self._loop.time()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._timer = self._loop.call_later(SWEEP_S, self.sweep) if self._deadlines else None


class _ConfirmingConnector(aiohttp.TCPConnector):
    """Calls `before_send` once a request's connection is ready, just before it is written,
    when getting it took QUICK_CONNECT_S or longer: the limiter then knows when the request
    really leaves (opening a connection yields to the event loop, which may stall).
    `before_send` returns what to wait for, or None.

    A pooled connection comes at once, and nothing between the limiter's grant and this call
    waits (the request is built in between), so such a send leaves within microseconds of its
    grant: far inside both limiters' tolerance (20 ms, 10 ms), and not worth asking them
    about on every poll."""

    def __init__(self, before_send: Callable[[], Awaitable[None] | None], **kw: Any) -> None:
        super().__init__(**kw)
        self._before_send = before_send

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 (aiohttp's signature)
        clock = self._loop.time
        started = clock()
        conn = await super().connect(req, traces, timeout)
        if clock() - started < QUICK_CONNECT_S:
            return conn
        try:
            if (wait := self._before_send()) is not None:
                await wait
        except BaseException:
            conn.release()
            raise
        return conn


async def _read_capped(content: aiohttp.StreamReader) -> bytes | None:
    """The whole body, or None when it is larger than MAX_BODY. `read(n)` returns what has
    arrived so far, so a body that comes in pieces (TLS records, TCP segments) takes more
    than one; on loopback and for small answers the first read nearly always holds it all."""
    body = await content.read(MAX_BODY + 1)
    if content.at_eof():
        return body if len(body) <= MAX_BODY else None
    parts = [body]
    size = len(body)
    while size <= MAX_BODY and (part := await content.read(MAX_BODY + 1 - size)):
        parts.append(part)
        size += len(part)
    return b"".join(parts) if size <= MAX_BODY else None


class RunaClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        api_version: str,
        timeout_s: float,
        max_connections: int,
        wall_clock: Callable[[], float] = time.time,
        before_send: Callable[[], Awaitable[None] | None] | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        """`resolver`: how host names are looked up (aiohttp's default when None)."""
        self.base_url = base_url.rstrip("/")
        base = URL(self.base_url)
        # Order URLs are built from this, already encoded: yarl's parse cache misses when
        # every request names another order.
        self._order_base, self._order_path = base, f"{base.raw_path.rstrip('/')}/order/"
        self._before_send = before_send
        self._headers = {
            "X-Api-Key": api_key,
            "X-Api-Version": api_version,
            "Accept": "application/json",
            "User-Agent": f"orderwatch/{__version__}",
        }
        self._timeout_s = timeout_s
        self._deadlines: _Deadlines | None = None
        self._max_connections = max_connections
        self._wall = wall_clock
        self._session: aiohttp.ClientSession | None = None
        self._resolver = resolver
        self.key_changes = 0  # reloads that brought a new key (what was refused may work now)

    @property
    def deadlines(self) -> _Deadlines | None:
        """The requests' timeouts (None outside `async with`)."""
        return self._deadlines

    def set_api_key(self, api_key: str) -> None:
        """A reload brought a new key; the next request uses it."""
        self.key_changes += 1
        self._headers = {**self._headers, "X-Api-Key": api_key}
        if self._session is not None:
            self._session.headers["X-Api-Key"] = api_key

    async def __aenter__(self) -> RunaClient:
        # One connection more than there are workers: the sweep's page never waits for a
        # worker's connection after its grant (a send that leaves late eats the limiter's
        # margin; with four workers and a sweep on four connections the server saw 11 in a
        # second at 10/s).
        limit = self._max_connections + 1
        options: dict[str, Any] = {"limit": limit, "ttl_dns_cache": 300}
        if self._resolver is not None:
            options["resolver"] = self._resolver
        connector = (
            aiohttp.TCPConnector(**options)
            if self._before_send is None
            else _ConfirmingConnector(self._before_send, **options)
        )
        self._deadlines = _Deadlines(asyncio.get_running_loop(), self._timeout_s)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(),  # none: see _Deadlines
            raise_for_status=False,
            # The session's own headers, not per request: aiohttp merges per-request headers
            # into a new dict for every GET.
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),  # the API sets none; none is kept or sent
        )
        # The one private knob we touch: see the module docstring. Checked by a test.
        session._retry_connection = False
        self._session = session
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_order(self, order_id: str) -> Answer:
        """GET {base}/order/{id}; order_id must already match the ID pattern (which leaves
        nothing to percent-encode)."""
        url = self._order_base.with_path(self._order_path + order_id, encoded=True)
        wall = self._wall
        return await self._exchange(
            url, lambda status, body, ra: classify(status, body, order_id, ra, wall())
        )

    async def list_orders(
        self, limit: int, after: str | None = None, before: str | None = None
    ) -> Answer:
        """GET {base}/order?limit=…[&after=…|&before=…]: one page of the list endpoint,
        classified (LISTED with its Page, or why not). The cursors are the API's own."""
        query: dict[str, str] = {"limit": str(limit)}
        if after is not None:
            query["after"] = after
        if before is not None:
            query["before"] = before
        url = self._order_base.with_path(self._order_path.rstrip("/"), encoded=True)
        wall = self._wall
        return await self._exchange(
            url.with_query(query), lambda status, body, ra: classify_list(status, body, ra, wall())
        )

    async def _exchange(
        self, url: URL, parse: Callable[[int, bytes, str | None], Answer]
    ) -> Answer:
        """One GET through the session, its body read (capped) and parsed, every failure an
        Answer."""
        session, deadlines = self._session, self._deadlines
        assert session is not None and deadlines is not None, "use `async with RunaClient(...)`"
        task = asyncio.current_task()
        assert task is not None
        deadlines.start(task)
        try:
            # A redirect is an answer, not a second GET: that one would pass no limiter,
            # and aiohttp would send X-Api-Key on to whatever host it names.
            async with session.get(url, allow_redirects=False) as resp:
                body = await _read_capped(resp.content)
                if body is None:
                    return Answer(Kind.INVALID, resp.status, detail="body too large")
                try:
                    return parse(resp.status, body, resp.headers.get("Retry-After"))
                except Exception as e:  # a parser's surprise costs one answer, not the order
                    return Answer(
                        Kind.INVALID, resp.status, detail=f"unreadable: {type(e).__name__}"
                    )
        except asyncio.CancelledError:
            if deadlines.timed_out(task):
                return Answer(Kind.TRANSPORT, detail="timeout")
            raise
        except TimeoutError:  # aiohttp's connect timeouts, should any be set
            return Answer(Kind.TRANSPORT, detail="timeout")
        except aiohttp.ClientError as e:
            return Answer(Kind.TRANSPORT, detail=f"transport: {type(e).__name__}")
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            return Answer(Kind.TRANSPORT, detail=f"transport: {type(e).__name__}")
        finally:
            deadlines.end(task)

    async def ping(self) -> Answer:
        """GET {base}/ping: a cheap start-up check of the key (counts against the rate)."""
        assert self._session is not None
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.get(f"{self.base_url}/ping", allow_redirects=False) as r,
            ):
                await r.read()
                kind = Kind.AUTH if r.status in (401, 403) else Kind.PROCESSING
                return Answer(kind, r.status, detail=f"http {r.status}")
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            return Answer(Kind.TRANSPORT, detail=f"transport: {type(e).__name__}")
