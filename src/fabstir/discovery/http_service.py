"""The HTTP discovery service: hosts announce signed records, clients list and report them.

Theory of operation. :class:`DiscoveryRegistry` is the pure, in-memory core (the
caller passes ``now_ms``); :func:`build_discovery_app` is a thin Starlette skin over
it and :func:`serve_discovery` runs that app with uvicorn on a socket it binds.

Registry rules, keyed by host address (case-insensitive):

1. A record is stored only after :func:`~fabstir.protocol.announcement.parse_announcement`
   verified its signature and TTL; the service hands the signed record back unchanged,
   so clients verify it again themselves.
2. A record from the key that holds the address replaces the held one when its
   ``issuedAt`` is higher (a heartbeat); an equal one is a no-op, an older one is refused.
3. A record under a *different* key is refused while the held one is live (no hijacking).
4. Expired records are dropped on read and on :meth:`DiscoveryRegistry.sweep`; with
   ``max_hosts`` live hosts a new address is refused (``REGISTRY_FULL``).
5. Reports are kept per host, one per distinct reporter (the latest, with its time),
   at most ``max_reports_per_host``; they are forgotten with the host's record.

Routes::

    POST /v1/announce                 signed record JSON -> {"accepted": true, "expiresAt": ms}
    GET  /v1/hosts?model=&max_price=&capability=&region=&limit=&offset=
                                      {"hosts": [{"record": {...}, "reports": n}], "count": n, "total": n,
                                       "next": offset of the next page or null}
    GET  /v1/hosts/{address}          {"record": {...}, "reports": n, "recentReports": [...]}
    POST /v1/hosts/{address}/report   {"issue": "..."} -> {"reports": n}
    GET  /health, GET /v1/stats

Errors are ``{"error": {"code": ..., "message": ...}}`` with a 4xx status (507 when full).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fabstir._clock import wall_clock_ms
from fabstir._net import bind_socket
from fabstir.errors import FabstirError
from fabstir.protocol.announcement import MAX_ANNOUNCEMENT_BYTES, HostAnnouncement, parse_announcement

__all__ = [
    "DiscoveryRegistry",
    "DiscoveryServer",
    "HostEntry",
    "HostQuery",
    "MAX_LIMIT",
    "RegistryError",
    "Report",
    "build_discovery_app",
    "serve_discovery",
    "wall_clock_ms",
]

MAX_LIMIT = 1000
"""Most hosts one ``GET /v1/hosts`` returns."""
MAX_REPORT_BYTES = 2048
"""Largest report body accepted."""

_STATUS = {
    "INVALID_ANNOUNCEMENT": 400, "ANNOUNCEMENT_EXPIRED": 400, "STALE_TIMESTAMP": 400, "INVALID_QUERY": 400,
    "INVALID_REPORT": 400, "SIGNATURE_INVALID": 403, "HOST_NOT_FOUND": 404, "HOST_KEY_MISMATCH": 409,
    "ANNOUNCEMENT_OUTDATED": 409, "PAYLOAD_TOO_LARGE": 413, "REGISTRY_FULL": 507,
}



class RegistryError(FabstirError):
    """The registry refused an announcement, report or query (``code`` says why)."""

    default_code = "INVALID_QUERY"


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """One reporter's latest complaint about a host."""

    reporter: str
    issue: str
    at_ms: int


@dataclasses.dataclass(slots=True)
class HostEntry:
    """A held record and the reports against its address."""

    record: HostAnnouncement
    reports: OrderedDict[str, Report] = dataclasses.field(default_factory=OrderedDict)


@dataclasses.dataclass(frozen=True, slots=True)
class HostQuery:
    """Filters for :meth:`DiscoveryRegistry.query`; ``None`` or empty means no constraint."""

    model: str | None = None
    max_price: int | None = None
    capabilities: frozenset[str] = frozenset()
    region: str | None = None
    limit: int = MAX_LIMIT
    offset: int = 0

    def matches(self, record: HostAnnouncement) -> bool:
        """Whether ``record`` passes every filter."""
        return ((self.model is None or self.model in record.models)
                and (self.max_price is None or record.price_per_token <= self.max_price)
                and self.capabilities <= set(record.capabilities)
                and (self.region is None or record.region == self.region))


class DiscoveryRegistry:
    """The service's store of live host records and reports; pure (every call takes ``now_ms``).

    Args:
        max_hosts: most live hosts held; a new address beyond it is refused with ``REGISTRY_FULL``.
        max_reports_per_host: distinct reporters remembered per host (the oldest is forgotten first).
        max_issue_chars: longest report text accepted.
    """

    def __init__(self, *, max_hosts: int = 1000, max_reports_per_host: int = 50, max_issue_chars: int = 280) -> None:
        if max_hosts < 1 or max_reports_per_host < 1 or max_issue_chars < 1:
            raise ValueError("registry limits must be positive")
        self.max_hosts = max_hosts
        self.max_reports_per_host = max_reports_per_host
        self.max_issue_chars = max_issue_chars
        self._hosts: dict[str, HostEntry] = {}
        self.counters: Counter[str] = Counter()
        """Accepted/refused announcements (by code), reports and queries since start."""

    def __len__(self) -> int:
        return len(self._hosts)

    def announce(self, record: HostAnnouncement, now_ms: int) -> HostEntry:
        """Hold a verified ``record`` (rules 2-4 of the module docstring); returns the entry now held.

        Raises:
            RegistryError: ``HOST_KEY_MISMATCH``, ``ANNOUNCEMENT_OUTDATED``, ``ANNOUNCEMENT_EXPIRED`` or
                ``REGISTRY_FULL``.
        """
        try:
            entry = self._admit(record, now_ms)
        except RegistryError as exc:
            self.counters[f"refused.{exc.code}"] += 1
            raise
        self.counters["accepted"] += 1
        return entry

    def _admit(self, record: HostAnnouncement, now_ms: int) -> HostEntry:
        if record.is_expired(now_ms):
            raise RegistryError("announcement is past its TTL", code="ANNOUNCEMENT_EXPIRED")
        key = record.host.lower()
        held = self._live(key, now_ms)
        if held is None:
            if len(self._hosts) >= self.max_hosts:
                self.sweep(now_ms)
            if len(self._hosts) >= self.max_hosts:
                raise RegistryError(f"the registry holds {self.max_hosts} hosts", code="REGISTRY_FULL")
            entry = self._hosts[key] = HostEntry(record)
            return entry
        if held.record.signing_key != record.signing_key:
            raise RegistryError(f"{record.host} is announced under another signing key until it expires",
                                code="HOST_KEY_MISMATCH")
        if record.issued_at_ms < held.record.issued_at_ms:
            raise RegistryError("a newer announcement is already held", code="ANNOUNCEMENT_OUTDATED")
        if record.issued_at_ms > held.record.issued_at_ms:
            held.record = record
        return held

    def _live(self, key: str, now_ms: int) -> HostEntry | None:
        entry = self._hosts.get(key)
        if entry is not None and entry.record.is_expired(now_ms):
            del self._hosts[key]
            return None
        return entry

    def get(self, address: str, now_ms: int) -> HostEntry | None:
        """The live entry for ``address`` (any case), or ``None``."""
        return self._live(address.lower(), now_ms)

    def query(self, query: HostQuery, now_ms: int) -> list[HostEntry]:
        """Live entries matching ``query``, cheapest first (ties by address), at most ``query.limit``
        starting at ``query.offset``."""
        return self.query_page(query, now_ms)[0]

    def query_page(self, query: HostQuery, now_ms: int) -> tuple[list[HostEntry], int]:
        """Like :meth:`query`, with the number of matching entries in all pages."""
        self.sweep(now_ms)
        self.counters["queries"] += 1
        found = [entry for entry in self._hosts.values() if query.matches(entry.record)]
        found.sort(key=lambda entry: (entry.record.price_per_token, entry.record.host.lower()))
        return found[query.offset:query.offset + query.limit], len(found)

    def report(self, address: str, reporter: str, issue: str, now_ms: int) -> int:
        """Record ``reporter``'s complaint about ``address``; returns the number of distinct reporters.

        Raises:
            RegistryError: ``HOST_NOT_FOUND`` (no live record) or ``INVALID_REPORT`` (empty or too long issue).
        """
        if not issue.strip() or len(issue) > self.max_issue_chars:
            raise RegistryError(f"'issue' must be 1..{self.max_issue_chars} characters", code="INVALID_REPORT")
        entry = self.get(address, now_ms)
        if entry is None:
            raise RegistryError(f"no live announcement for {address}", code="HOST_NOT_FOUND")
        entry.reports.pop(reporter, None)
        entry.reports[reporter] = Report(reporter, issue, now_ms)
        while len(entry.reports) > self.max_reports_per_host:
            entry.reports.popitem(last=False)
        self.counters["reports"] += 1
        return len(entry.reports)

    def sweep(self, now_ms: int) -> int:
        """Drop every expired record; returns how many were dropped."""
        stale = [key for key, entry in self._hosts.items() if entry.record.is_expired(now_ms)]
        for key in stale:
            del self._hosts[key]
        return len(stale)

    def stats(self, now_ms: int) -> dict[str, Any]:
        """Live host count, limits and counters, as served by ``GET /v1/stats``."""
        self.sweep(now_ms)
        return {"hosts": len(self._hosts), "maxHosts": self.max_hosts,
                "reportedHosts": sum(1 for entry in self._hosts.values() if entry.reports),
                "counters": dict(sorted(self.counters.items()))}


# -- the HTTP skin --------------------------------------------------------------------------------------------


def _error(exc: FabstirError) -> Response:
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}},
                        status_code=_STATUS.get(exc.code, 400))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RegistryError(f"body exceeds {limit} bytes", code="PAYLOAD_TOO_LARGE")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RegistryError(f"body exceeds {limit} bytes", code="PAYLOAD_TOO_LARGE")
    return bytes(body)


def _int_param(request: Request, name: str, low: int, high: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        raise RegistryError(f"'{name}' must be an integer from {low}{f' to {high}' if high else ''}")
    return int(raw)


def _parse_query(request: Request) -> HostQuery:
    params = request.query_params
    return HostQuery(model=params.get("model") or None, max_price=_int_param(request, "max_price", 0),
                     capabilities=frozenset(c for c in params.getlist("capability") if c),
                     region=params.get("region") or None, limit=_int_param(request, "limit", 1, MAX_LIMIT) or MAX_LIMIT,
                     offset=_int_param(request, "offset", 0) or 0)


def _listing(entry: HostEntry) -> dict[str, Any]:
    return {"record": entry.record.to_wire(), "reports": len(entry.reports)}


def build_discovery_app(registry: DiscoveryRegistry, *, clock: Callable[[], int] = wall_clock_ms) -> Starlette:
    """The ASGI app serving ``registry`` (routes in the module docstring); ``clock`` gives unix ms."""

    def coded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                result: Response = await handler(request)
            except FabstirError as exc:
                return _error(exc)
            return result
        return endpoint

    async def announce(request: Request) -> Response:
        now = clock()
        try:
            record = parse_announcement(await _read_body(request, MAX_ANNOUNCEMENT_BYTES), now)
        except FabstirError as exc:
            registry.counters[f"refused.{exc.code}"] += 1
            raise
        entry = registry.announce(record, now)
        return JSONResponse({"accepted": True, "expiresAt": entry.record.expires_at_ms})

    async def hosts(request: Request) -> Response:
        query = _parse_query(request)
        found, total = registry.query_page(query, clock())
        end = query.offset + len(found)
        return JSONResponse({"hosts": [_listing(entry) for entry in found], "count": len(found), "total": total,
                             "next": end if end < total else None})

    async def host(request: Request) -> Response:
        address = request.path_params["address"]
        entry = registry.get(address, clock())
        if entry is None:
            raise RegistryError(f"no live announcement for {address}", code="HOST_NOT_FOUND")
        recent = [{"issue": r.issue, "at": r.at_ms} for r in reversed(entry.reports.values())]
        return JSONResponse({**_listing(entry), "recentReports": recent})

    async def report(request: Request) -> Response:
        try:
            body = json.loads(await _read_body(request, MAX_REPORT_BYTES))
        except (ValueError, RecursionError):
            raise RegistryError("body is not JSON", code="INVALID_REPORT") from None
        issue = body.get("issue") if isinstance(body, dict) else None
        if not isinstance(issue, str):
            raise RegistryError("body must be {\"issue\": \"...\"}", code="INVALID_REPORT")
        reporter = request.client.host if request.client else "unknown"
        count = registry.report(request.path_params["address"], reporter, issue, clock())
        return JSONResponse({"reports": count})

    async def health(request: Request) -> Response:
        registry.sweep(clock())
        return JSONResponse({"status": "healthy", "hosts": len(registry)})

    async def stats(request: Request) -> Response:
        return JSONResponse(registry.stats(clock()))

    return Starlette(routes=[
        Route("/health", coded(health)),
        Route("/v1/stats", coded(stats)),
        Route("/v1/announce", coded(announce), methods=["POST"]),
        Route("/v1/hosts", coded(hosts)),
        Route("/v1/hosts/{address}", coded(host)),
        Route("/v1/hosts/{address}/report", coded(report), methods=["POST"]),
    ])


# -- running it -----------------------------------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DiscoveryServer:
    """A running discovery service; ``url`` is valid inside :func:`serve_discovery`."""

    def __init__(self, registry: DiscoveryRegistry, host: str, port: int, task: asyncio.Task[None],
                 server: _EmbeddedServer) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._task = task
        self._server = server

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8090``."""
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    async def serve_forever(self) -> None:
        """Wait until the server stops (Ctrl-C in the CLI)."""
        await self._task


@contextlib.asynccontextmanager
async def serve_discovery(host: str = "127.0.0.1", port: int = 0, *, registry: DiscoveryRegistry | None = None,
                          max_hosts: int = 1000, clock: Callable[[], int] = wall_clock_ms,
                          sweep_interval_s: float = 30.0) -> AsyncIterator[DiscoveryServer]:
    """Serve a discovery registry on ``host:port`` (``0`` picks a free port) until the block exits.

    Raises:
        ConfigError: the port is busy or the address cannot be bound.
    """
    registry = registry if registry is not None else DiscoveryRegistry(max_hosts=max_hosts)
    sock = bind_socket(host, port)
    config = uvicorn.Config(build_discovery_app(registry, clock=clock), log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=2)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    sweeper = asyncio.create_task(_sweep_forever(registry, clock, sweep_interval_s))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise FabstirError("the discovery service stopped while starting", code="BIND_FAILED")
            await asyncio.sleep(0.01)
        yield DiscoveryServer(registry, host, int(sock.getsockname()[1]), task, server)
    finally:
        sweeper.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        sock.close()


async def _sweep_forever(registry: DiscoveryRegistry, clock: Callable[[], int], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        registry.sweep(clock())
