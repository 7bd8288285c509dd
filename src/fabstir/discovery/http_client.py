"""Client of the HTTP discovery service, and a heartbeat that keeps a host announced.

The service is not trusted: :class:`HttpDiscoveryClient` verifies every record it
receives with :func:`~fabstir.protocol.announcement.parse_announcement` (signature and
TTL, at the client's own clock) and drops those that fail or do not match the query.

Requests that fail to connect, time out or get a 500/502/503/504 are retried after
delays from :func:`backoff_delays`; any other 4xx/5xx is raised at once as a
:class:`DiscoveryServiceError` carrying the service's ``code``. Host lists are cached
per query for ``cache_ttl_s``; :meth:`HttpDiscoveryClient.invalidate` forgets them and
:meth:`HttpDiscoveryClient.start_background_refresh` re-fetches them on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import httpx

from fabstir._clock import wall_clock_ms
from fabstir._retry import backoff_delays
from fabstir.discovery.selection import HostCandidate, Requirements
from fabstir.discovery.sources import candidate_from_announcement
from fabstir.errors import ConnectError, FabstirError, NodeError, RemoteProtocolError, RequestTimeoutError
from fabstir.protocol.announcement import AnnouncementError, HostAnnouncement, parse_announcement

__all__ = [
    "ClientStats",
    "DiscoveryServiceError",
    "HttpAnnouncer",
    "HttpDiscoveryClient",
    "ListedHost",
    "backoff_delays",
    "measure_rtt",
]

log = logging.getLogger("fabstir.discovery.http")

_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_PAGE_SIZE = 1000  # the service's largest page
_QueryKey = tuple[str | None, int | None, tuple[str, ...], str | None, int | None]



class DiscoveryServiceError(NodeError):
    """The discovery service (or a pinged host) answered with an error; ``code`` is the service's code.

    Attributes:
        status_code: the HTTP status.
    """

    default_code = "DISCOVERY_ERROR"

    def __init__(self, message: str, *, code: str | None = None, status_code: int = 0) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


@dataclasses.dataclass(frozen=True, slots=True)
class ListedHost:
    """A verified record as the service listed it, with the number of distinct reporters against it."""

    record: HostAnnouncement
    reports: int = 0


@dataclasses.dataclass(slots=True)
class ClientStats:
    """Counters since the client was made."""

    hits: int = 0
    misses: int = 0
    refreshes: int = 0
    requests: int = 0
    retries: int = 0
    dropped: int = 0
    """Records dropped: bad signature, expired, malformed, or not matching the query."""


@dataclasses.dataclass(slots=True)
class _Cached:
    fetched_ms: int
    hosts: list[ListedHost]


def _key(requirements: Requirements | None, limit: int | None) -> _QueryKey:
    req = requirements or Requirements()
    return (req.model, req.max_price, tuple(sorted(req.capabilities)), req.region, limit)


def _params(key: _QueryKey) -> list[tuple[str, str]]:
    model, max_price, capabilities, region, limit = key
    params = [("model", model), ("max_price", None if max_price is None else str(max_price)), ("region", region),
              ("limit", None if limit is None else str(limit))]
    return [(k, v) for k, v in params if v is not None] + [("capability", c) for c in capabilities]


def _matches(record: HostAnnouncement, key: _QueryKey) -> bool:
    model, max_price, capabilities, region, _ = key
    return ((model is None or model in record.models)
            and (max_price is None or record.price_per_token <= max_price)
            and set(capabilities) <= set(record.capabilities)
            and (region is None or record.region == region))


def _health_url(url: str) -> str:
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            url = http + url[len(ws):]
    url = url.rstrip("/")
    return (url[:-len("/v1/ws")] if url.endswith("/v1/ws") else url) + "/health"


async def measure_rtt(http: httpx.AsyncClient, url: str) -> float:
    """Measured round trip, in milliseconds, of one ``GET /health`` through ``http`` to the host at ``url``.

    Raises:
        ConnectError, RequestTimeoutError: the host is unreachable or too slow.
        DiscoveryServiceError: code ``HOST_UNHEALTHY`` when it answers with an error status.
    """
    target = _health_url(url)
    started = time.perf_counter()
    with _mapped(target):
        response = await http.get(target)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise DiscoveryServiceError(f"{target} answered {response.status_code}", code="HOST_UNHEALTHY",
                                    status_code=response.status_code)
    return elapsed_ms


class HttpDiscoveryClient:
    """Lists, looks up, pings and reports hosts through an HTTP discovery service; a :class:`DiscoverySource`.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8090``.
        cache_ttl_s: how long a query's answer is reused; ``0`` disables the cache.
        retries: extra attempts after a connection error, timeout or 500/502/503/504.
        timeout_s: per request.
        backoff_s, backoff_max_s: first and largest delay between attempts (doubling).
        clock: unix milliseconds, used to check record TTLs and cache ages.
        transport: an httpx transport to use instead of the network (tests, proxies).
        page_size: hosts asked for per request when a query has no ``limit`` (the service pages the rest).
        max_hosts: most hosts one query collects across pages.
    """

    name = "http"

    def __init__(self, base_url: str, *, cache_ttl_s: float = 30.0, retries: int = 2, timeout_s: float = 5.0,
                 backoff_s: float = 0.1, backoff_max_s: float = 2.0, clock: Callable[[], int] = wall_clock_ms,
                 max_cached_queries: int = 128, transport: httpx.AsyncBaseTransport | None = None,
                 page_size: int = _PAGE_SIZE, max_hosts: int = 10_000) -> None:
        if retries < 0 or cache_ttl_s < 0 or timeout_s <= 0 or max_cached_queries < 1:
            raise ValueError("retries and cache_ttl_s must be >= 0, timeout_s and max_cached_queries > 0")
        if not 1 <= page_size <= _PAGE_SIZE or max_hosts < 1:
            raise ValueError(f"page_size must be 1..{_PAGE_SIZE} and max_hosts positive")
        self.page_size = page_size
        self.max_hosts = max_hosts
        self.base_url = base_url.rstrip("/")
        self.cache_ttl_ms = int(cache_ttl_s * 1000)
        self.retries = retries
        self.timeout_s = timeout_s
        self._backoff = (backoff_s, backoff_max_s)
        self._clock = clock
        self._max_cached = max_cached_queries
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self._cache: OrderedDict[_QueryKey, _Cached] = OrderedDict()
        self._refresher: asyncio.Task[None] | None = None
        self.stats = ClientStats()

    async def __aenter__(self) -> HttpDiscoveryClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the background refresh and close connections."""
        await self.stop_background_refresh()
        await self._http.aclose()

    # -- queries -----------------------------------------------------------------------------------------------

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """Same as :meth:`discover_hosts` (the :class:`DiscoverySource` interface)."""
        return await self.discover_hosts(requirements)

    async def discover_hosts(self, requirements: Requirements | None = None, *,
                             limit: int | None = None) -> list[HostCandidate]:
        """Verified hosts matching ``requirements`` (model, max_price, capabilities, region), cheapest first.

        ``min_reputation`` and ``max_latency_ms`` are not known to the service; the caller applies them.

        Raises:
            ConnectError, RequestTimeoutError: the service is unreachable after the retries.
            DiscoveryServiceError: the service refused the query.
        """
        listed = await self.list_hosts(requirements, limit=limit)
        return [candidate_from_announcement(host.record, self.name) for host in listed]

    async def list_hosts(self, requirements: Requirements | None = None, *,
                         limit: int | None = None) -> list[ListedHost]:
        """Like :meth:`discover_hosts`, as verified records with their report counts (served from the cache)."""
        key = _key(requirements, limit)
        now = self._clock()
        cached = self._cache.get(key)
        # A cached answer holding a lapsed record is refetched: the host has most likely re-announced since.
        if cached is not None and now - cached.fetched_ms < self.cache_ttl_ms \
                and not any(host.record.is_expired(now) for host in cached.hosts):
            self.stats.hits += 1
            return list(cached.hosts)
        self.stats.misses += 1
        return await self._fetch(key)

    async def _fetch(self, key: _QueryKey) -> list[ListedHost]:
        items = await self._fetch_items(key)
        hosts = self._verified(items, key)
        if self.cache_ttl_ms > 0:
            self._cache[key] = _Cached(self._clock(), hosts)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return hosts

    async def _fetch_items(self, key: _QueryKey) -> list[Any]:
        """The raw listing: one request for a query with a limit, otherwise page after page (``next``)."""
        limit = key[-1]
        params = _params(key if limit is not None else (*key[:-1], self.page_size))
        items: list[Any] = []
        offset = 0
        while True:
            body = _json(await self._request("GET", "/v1/hosts", params=[*params, ("offset", str(offset))]))
            page = body.get("hosts") if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise RemoteProtocolError("discovery service answered without a 'hosts' list",
                                          code="INVALID_RESPONSE")
            items.extend(page[:self.max_hosts - len(items)])
            following = body.get("next")
            if limit is not None or following is None or len(items) >= self.max_hosts:
                return items
            if not isinstance(following, int) or isinstance(following, bool) or following <= offset:
                raise RemoteProtocolError(f"discovery service paging does not advance (next={following!r} after "
                                          f"offset {offset})", code="INVALID_RESPONSE")
            offset = following

    def _verified(self, items: list[Any], key: _QueryKey) -> list[ListedHost]:
        now = self._clock()
        kept: dict[str, ListedHost] = {}
        for item in items:
            host = self._verify_item(item, now)
            if host is None or not _matches(host.record, key):
                self.stats.dropped += 1
                continue
            address = host.record.host.lower()
            held = kept.get(address)
            if held is not None:
                self.stats.dropped += 1
                if held.record.issued_at_ms >= host.record.issued_at_ms:
                    continue
            kept[address] = host
        return sorted(kept.values(), key=lambda h: (h.record.price_per_token, h.record.host.lower()))

    def _verify_item(self, item: Any, now_ms: int) -> ListedHost | None:
        if not isinstance(item, dict) or not isinstance(item.get("record"), dict):
            return None
        try:
            record = parse_announcement(item["record"], now_ms)
        except FabstirError as exc:
            log.warning("dropping a record from %s: %s", self.base_url, exc)
            return None
        reports = item.get("reports")
        if not isinstance(reports, int) or isinstance(reports, bool) or reports < 0:
            reports = 0
        return ListedHost(record, reports)

    async def get_host_details(self, address: str) -> HostAnnouncement:
        """The verified live record of the host at ``address``.

        Raises:
            DiscoveryServiceError: code ``HOST_NOT_FOUND`` when the service holds no live record.
            AnnouncementError, SignatureError: the service answered with a record that does not verify,
                or with another host's record (code ``HOST_MISMATCH``).
        """
        body = _json(await self._request("GET", f"/v1/hosts/{address}"))
        if not isinstance(body, dict) or not isinstance(body.get("record"), dict):
            raise RemoteProtocolError("discovery service answered without a 'record'", code="INVALID_RESPONSE")
        record = parse_announcement(body["record"], self._clock())
        if record.host.lower() != address.lower():
            raise AnnouncementError(f"asked for {address}, got a record for {record.host}", code="HOST_MISMATCH")
        return record

    # -- writes ------------------------------------------------------------------------------------------------

    async def announce(self, record: HostAnnouncement) -> int:
        """Post a signed record; returns when it expires (unix ms). Forgets the cached lists.

        Raises:
            DiscoveryServiceError: the service refused it (``HOST_KEY_MISMATCH``, ``REGISTRY_FULL``, …).
        """
        response = await self._request("POST", "/v1/announce", content=record.to_json(),
                                       headers={"content-type": "application/json"})
        self.invalidate()
        return _int_field(_json(response), "expiresAt")

    async def report_host(self, address: str, issue: str) -> int:
        """Report a bad host; returns how many distinct reporters it has now. Forgets the cached lists."""
        response = await self._request("POST", f"/v1/hosts/{address}/report", json={"issue": issue})
        self.invalidate()
        return _int_field(_json(response), "reports")

    async def ping_host(self, url: str) -> float:
        """Measured round trip, in milliseconds, of one ``GET /health`` to the host at ``url`` (no retries).

        Raises:
            ConnectError, RequestTimeoutError: the host is unreachable or too slow.
            DiscoveryServiceError: code ``HOST_UNHEALTHY`` when it answers with an error status.
        """
        return await measure_rtt(self._http, url)

    # -- cache -------------------------------------------------------------------------------------------------

    def invalidate(self, *queries: Requirements | None) -> None:
        """Forget cached answers: all of them, or those for the given requirements (``None``: the unfiltered list)."""
        if not queries:
            self._cache.clear()
            return
        prefixes = {_key(query, None)[:4] for query in queries}
        for key in [key for key in self._cache if key[:4] in prefixes]:
            del self._cache[key]

    async def refresh(self) -> int:
        """Re-fetch every cached query now; returns how many succeeded (failures keep the old answer)."""
        done = 0
        for key in list(self._cache):
            try:
                await self._fetch(key)
            except FabstirError as exc:
                log.warning("refreshing the host list from %s failed: %s", self.base_url, exc)
                continue
            done += 1
            self.stats.refreshes += 1
        return done

    def start_background_refresh(self, interval_s: float) -> None:
        """Re-fetch cached queries every ``interval_s`` seconds until :meth:`stop_background_refresh`."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever(interval_s))

    async def stop_background_refresh(self) -> None:
        """Stop the background refresh, if running."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh()

    # -- transport ---------------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delays = backoff_delays(*self._backoff)
        for attempt in range(self.retries + 1):
            self.stats.requests += 1
            try:
                with _mapped(self.base_url + path):
                    response = await self._http.request(method, path, **kwargs)
            except (ConnectError, RequestTimeoutError) as exc:
                failure: FabstirError = exc
            else:
                if response.status_code < 400:
                    return response
                failure = _service_error(response)
                if response.status_code not in _RETRY_STATUSES:
                    raise failure
            if attempt == self.retries:
                if attempt:
                    failure.message += f" (after {attempt + 1} attempts)"
                raise failure
            self.stats.retries += 1
            await asyncio.sleep(next(delays))
        raise AssertionError("unreachable")


@contextlib.contextmanager
def _mapped(url: str) -> Iterator[None]:
    """Translate httpx's transport errors into fabstir's."""
    try:
        yield
    except httpx.TimeoutException:
        raise RequestTimeoutError(f"{url} did not answer in time") from None
    except httpx.TransportError as exc:
        raise ConnectError(f"cannot reach {url}: {type(exc).__name__} {exc}".rstrip()) from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise RemoteProtocolError(f"{response.url} answered with invalid JSON", code="INVALID_RESPONSE") from None


def _int_field(body: Any, name: str) -> int:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RemoteProtocolError(f"discovery service answered without an integer '{name}'", code="INVALID_RESPONSE")
    return value


def _service_error(response: httpx.Response) -> DiscoveryServiceError:
    try:
        error = response.json().get("error")
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, AttributeError, KeyError, TypeError):
        code, message = f"HTTP_{response.status_code}", response.reason_phrase or "error"
    return DiscoveryServiceError(f"{response.request.method} {response.url.path}: {message}", code=code,
                                 status_code=response.status_code)


class HttpAnnouncer:
    """Keeps a host listed: every ``interval_s`` it signs a fresh record and posts it (a heartbeat).

    A failed beat (service down, refused) is logged and counted; the next beat tries again.

    Args:
        target: a client to post through, or the service URL (a client without retries is then owned).
        make_record: signs a record issued at the given unix ms (``sign_announcement(key, now_ms=..., ...)``).
        interval_s: seconds between beats; keep it well under the records' TTL.
        clock: unix milliseconds passed to ``make_record``.
    """

    def __init__(self, target: HttpDiscoveryClient | str, make_record: Callable[[int], HostAnnouncement],
                 interval_s: float, *, clock: Callable[[], int] = wall_clock_ms) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._owned = isinstance(target, str)
        self.client = HttpDiscoveryClient(target, retries=0) if isinstance(target, str) else target
        self.make_record = make_record
        self.interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.beats = 0
        self.failures = 0
        self.last_error: FabstirError | None = None
        self.expires_at_ms: int | None = None

    async def announce_once(self) -> bool:
        """Sign and post one record; ``True`` when accepted (failures are logged, not raised)."""
        try:
            self.expires_at_ms = await self.client.announce(self.make_record(self._clock()))
        except FabstirError as exc:
            self.failures += 1
            self.last_error = exc
            log.warning("announcing to %s failed (next beat in %.1f s): %s", self.client.base_url,
                        self.interval_s, exc)
            return False
        self.beats += 1
        return True

    def start(self) -> None:
        """Announce now and then every ``interval_s`` in a background task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._beat_forever())

    async def stop(self) -> None:
        """Stop beating (the record then lapses at its TTL); closes the client if this announcer made it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> HttpAnnouncer:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _beat_forever(self) -> None:
        while True:
            await self.announce_once()
            await asyncio.sleep(self.interval_s)
