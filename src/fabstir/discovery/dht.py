"""Kademlia DHT discovery: hosts publish signed announcements, clients find them by capability or model.

Theory of operation
-------------------
The DHT (the ``kademlia`` package: UDP, msgpack RPCs, keys hashed with SHA-1) stores plain strings and
authenticates nothing: anyone on it can store anything under any key. So nothing read from it is trusted:

* ``fabstir/host/<address>`` (address lowercased) holds the host's signed record
  (:mod:`fabstir.protocol.announcement`) as JSON. A lookup collects the values the nodes closest to
  the key hold, and keeps the newest one that parses, verifies under its ``signingKey``, is within its
  TTL and names the key's address. A forged value does not end a lookup: it goes on until a valid
  record turns up or every close node was asked.
* ``fabstir/hosts``, ``fabstir/capability/<name>`` and ``fabstir/model/<id>`` are indexes: JSON objects
  mapping a lowercased address to the expiry (unix ms) its host claimed. An index is only a hint:
  every address read from it is looked up and verified as above, and the record must list the
  capability or model searched. Reading an index merges the copies held by all close nodes.
* Announcing stores the record, then read-merge-writes each index: entries whose claimed expiry has
  passed are pruned, and at most :data:`MAX_INDEX_ENTRIES` (the latest-expiring) are kept. Two hosts
  announcing at once can overwrite each other's index entry; re-announcing (the heartbeat) restores it.
* A record proves only that the holder of ``signingKey`` said it. Whether that key belongs to the
  address is for the chain to say (``HostCandidate.signing_key`` is there to check).
* Every RPC waits at most ``rpc_timeout`` seconds, every DHT operation at most ``timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from kademlia.crawling import NodeSpiderCrawl, RPCFindResponse, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import ForgetfulStorage
from kademlia.utils import digest

from fabstir._clock import wall_clock_ms
from fabstir.discovery.selection import HostCandidate, Requirements
from fabstir.discovery.sources import candidate_from_announcement
from fabstir.errors import ConfigError, ConnectError, FabstirError, RequestTimeoutError, SessionError
from fabstir.protocol.announcement import MAX_CLOCK_SKEW_MS, MAX_TTL_S, HostAnnouncement, parse_announcement

__all__ = ["HOSTS_KEY", "MAX_INDEX_ENTRIES", "MAX_VALUE_BYTES", "DhtNode", "capability_key", "host_key",
           "model_key", "parse_bootstrap"]

log = logging.getLogger(__name__)
T = TypeVar("T")

HOSTS_KEY = "fabstir/hosts"
"""The index of every announced host."""
MAX_INDEX_ENTRIES = 96
"""Most addresses one index keeps (an index must fit one UDP datagram)."""
MAX_VALUE_BYTES = 8192 - 256
"""Largest value stored or accepted: rpcudp refuses requests over 8 KiB, and a store carries two ids besides."""
_LOOKUP_CONCURRENCY = 16


def host_key(address: str) -> str:
    """The DHT key of a host's signed record."""
    return f"fabstir/host/{address.lower()}"


def capability_key(capability: str) -> str:
    """The DHT key of the index of hosts that advertise ``capability``."""
    return f"fabstir/capability/{capability}"


def model_key(model: str) -> str:
    """The DHT key of the index of hosts that serve ``model``."""
    return f"fabstir/model/{model}"



class DhtNode:
    """A node of the Fabstir DHT that hosts announce through and clients search; a :class:`DiscoverySource`.

    Use as ``async with DhtNode() as node:`` (no bootstrap: the first node of a network) or call
    :meth:`start` with bootstrap addresses, and :meth:`stop` when done.

    Args:
        interface: IP address to bind (UDP). Only loopback unless ``allow_non_loopback``.
        port: UDP port; 0 picks a free one (read it back from :attr:`address`).
        ksize: Kademlia ``k``: replicas per key and bucket size.
        alpha: Kademlia ``alpha``: parallel RPCs per lookup round.
        rpc_timeout: seconds to wait for one RPC answer before counting the peer as gone.
        timeout: seconds any one DHT operation (bootstrap, lookup, store) may take.
        clock: unix milliseconds now, for TTL checks (tests pass a fake one).
        max_stored: most values this node keeps for others (oldest dropped first).

    Raises:
        ConfigError: a non-IP or (without ``allow_non_loopback``) non-loopback interface, or bad numbers.
    """

    name = "dht"

    def __init__(self, *, interface: str = "127.0.0.1", port: int = 0, ksize: int = 20, alpha: int = 3,
                 rpc_timeout: float = 2.0, timeout: float = 10.0, allow_non_loopback: bool = False,
                 clock: Callable[[], int] = wall_clock_ms, max_stored: int = 10_000) -> None:
        if not _is_ip(interface):
            raise ConfigError(f"DHT interface must be an IP address, got {interface!r}")
        if not allow_non_loopback and not ipaddress.ip_address(interface).is_loopback:
            raise ConfigError(f"refusing to bind the DHT to non-loopback {interface!r} "
                              "(pass allow_non_loopback=True to expose it)")
        if ksize < 1 or alpha < 1 or rpc_timeout <= 0 or timeout <= 0 or max_stored < 1 or not 0 <= port < 65536:
            raise ConfigError("DHT ksize, alpha, max_stored must be >= 1, timeouts > 0, port 0..65535")
        self._interface, self._port = interface, port
        self._ksize, self._alpha = ksize, alpha
        self._rpc_timeout, self._timeout = rpc_timeout, timeout
        self._clock, self._max_stored = clock, max_stored
        self._server: _Server | None = None

    async def __aenter__(self) -> DhtNode:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(ip, port)``, to give other nodes as a bootstrap address.

        Raises:
            SessionError: the node is not running.
        """
        sockname = self._require().transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    async def start(self, bootstrap: Sequence[tuple[str, int]] = ()) -> None:
        """Bind the UDP socket and, when given addresses, join their network.

        Raises:
            SessionError: already started.
            ConnectError: code ``DHT_BOOTSTRAP_FAILED`` when no bootstrap node answered (the node is stopped).
            OSError: the socket could not be bound.
        """
        if self._server is not None:
            raise SessionError("DHT node already started")
        storage = _Storage(ttl=MAX_TTL_S, max_items=self._max_stored)
        server = _Server(ksize=self._ksize, alpha=self._alpha, node_id=secrets.token_bytes(20), storage=storage,
                         rpc_timeout=self._rpc_timeout)
        await server.listen(self._port, self._interface)
        self._server = server
        if bootstrap:
            try:
                await self.bootstrap(bootstrap)
            except BaseException:
                await self.stop()
                raise

    async def bootstrap(self, addresses: Sequence[tuple[str, int]]) -> int:
        """Join the network through ``addresses`` (IP, port); returns how many nodes were found.

        Raises:
            ConfigError: an address is not an IP literal.
            ConnectError: code ``DHT_BOOTSTRAP_FAILED`` when none answered within ``rpc_timeout``.
        """
        server = self._require()
        for host, _port in addresses:
            if not _is_ip(host):
                raise ConfigError(f"DHT bootstrap addresses must be IP literals, got {host!r}")
        found = await self._bounded(self._join(server, addresses), "bootstrap")
        if not found:
            raise ConnectError(f"no DHT bootstrap node answered: {list(addresses)}", code="DHT_BOOTSTRAP_FAILED")
        return len(found)

    async def stop(self) -> None:
        """Close the socket and settle every outstanding RPC; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        if server.protocol is not None:
            server.protocol.abort_all()
        for _ in range(3):  # let the transport's close and the RPC callers settled above run
            await asyncio.sleep(0)

    async def announce_capabilities(self, record: HostAnnouncement) -> None:
        """Publish ``record`` and list its host under its capabilities, models and the all-hosts index.

        Re-announce a freshly signed record before ``ttl_s`` runs out (the heartbeat): readers drop
        expired records, and announcing prunes index entries whose hosts expired.

        Raises:
            AnnouncementError, SignatureError: the record would be refused by readers (expired, malformed, bad sig).
            ConfigError: the record is too large for a DHT datagram.
            ConnectError: code ``DHT_STORE_FAILED`` when no node accepted a value (no reachable peers).
            RequestTimeoutError: a store or index read took longer than ``timeout``.
        """
        value = record.to_json()
        parse_announcement(value, self._clock())
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise ConfigError(f"announcement is larger than {MAX_VALUE_BYTES} bytes: too large for the DHT")
        address = record.host.lower()
        await self._store(host_key(address), value)
        keys = [HOSTS_KEY, *map(capability_key, record.capabilities), *map(model_key, record.models)]
        results = await asyncio.gather(*(self._add_to_index(key, address, record.expires_at_ms) for key in keys),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def get_record(self, address: str) -> HostAnnouncement | None:
        """The newest valid record of ``address``; ``None`` when there is none (or ``address`` is malformed).

        Raises:
            RequestTimeoutError: the lookup took longer than ``timeout``.
        """
        key = _normal_address(address)
        if key is None:
            return None
        now = self._clock()
        found: list[HostAnnouncement] = []

        def accept(value: object) -> bool:
            record = _verified(value, key, now)
            if record is not None:
                found.append(record)
            return record is not None

        await self._collect(host_key(key), accept)
        return max(found, key=lambda record: record.issued_at_ms, default=None)

    async def search_by_capability(self, capability: str,
                                   requirements: Requirements | None = None) -> list[HostCandidate]:
        """Verified hosts that advertise ``capability`` (and meet ``requirements``), by address.

        Hosts whose record is missing, forged, expired or unreachable are left out.

        Raises:
            RequestTimeoutError: reading the index took longer than ``timeout`` (so do the other searches).
        """
        return await self._search(capability_key(capability), lambda r: capability in r.capabilities, requirements)

    async def search_by_model(self, model: str, requirements: Requirements | None = None) -> list[HostCandidate]:
        """Verified hosts that serve ``model`` (and meet ``requirements``), by address."""
        return await self._search(model_key(model), lambda r: model in r.models, requirements)

    async def discover_global_nodes(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """Every verified host in the all-hosts index (that meets ``requirements``), by address."""
        return await self._search(HOSTS_KEY, lambda r: True, requirements)

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """:class:`DiscoverySource` entry: searches the narrowest index ``requirements`` allow."""
        if requirements is not None and requirements.model is not None:
            return await self.search_by_model(requirements.model, requirements)
        if requirements is not None and requirements.capabilities:
            return await self.search_by_capability(min(requirements.capabilities), requirements)
        return await self.discover_global_nodes(requirements)

    # -- internals -------------------------------------------------------------------------------------------

    def _require(self) -> _Server:
        if self._server is None:
            raise SessionError("DHT node is not running (call start() first)", code="DHT_NOT_STARTED")
        return self._server

    async def _bounded(self, operation: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(operation, self._timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"DHT {what} took longer than {self._timeout}s") from None

    async def _search(self, key: str, lists: Callable[[HostAnnouncement], bool],
                      requirements: Requirements | None) -> list[HostCandidate]:
        index = await self._read_index(key)
        limit = asyncio.Semaphore(_LOOKUP_CONCURRENCY)

        async def lookup(address: str) -> HostAnnouncement | None:
            async with limit:
                try:
                    return await self.get_record(address)
                except FabstirError as error:  # one unreachable record must not sink the search
                    log.debug("DHT lookup of %s failed: %s", address, error)
                    return None

        records = await asyncio.gather(*(lookup(address) for address in sorted(index)))
        candidates = [candidate_from_announcement(r, self.name) for r in records if r is not None and lists(r)]
        return [c for c in candidates if requirements is None or requirements.accepts(c)]

    async def _collect(self, key: str, accept: Callable[[object], bool]) -> list[object]:
        """Values held for ``key`` here and at the closest nodes; stops early once ``accept`` says one will do."""
        server = self._require()
        dkey = digest(key)
        values: list[object] = []
        local = server.storage.get(dkey)
        if local is not None:
            values.append(local)
            if accept(local):
                return values
        target = Node(dkey)
        nearest = server.protocol.router.find_neighbors(target)
        if nearest:
            crawl = _ValueCrawl(server.protocol, target, nearest, server.ksize, server.alpha, accept)
            values.extend(await self._bounded(crawl.find(), f"lookup of {key!r}"))
        return values

    async def _join(self, server: _Server, addresses: Sequence[tuple[str, int]]) -> list[Node]:
        answered = await asyncio.gather(*(server.bootstrap_node((host, int(port))) for host, port in addresses))
        known = [node for node in answered if node is not None]
        if not known:
            return []
        crawl = _NodeCrawl(server.protocol, server.node, known, server.ksize, server.alpha)
        return await crawl.find()  # type: ignore[no-any-return]

    async def _store(self, key: str, value: str) -> None:
        server = self._require()
        if not await self._bounded(self._store_at_closest(server, digest(key), value), f"store of {key!r}"):
            raise ConnectError(f"no DHT node accepted {key!r}", code="DHT_STORE_FAILED")

    @staticmethod
    async def _store_at_closest(server: _Server, dkey: bytes, value: str) -> bool:
        """kademlia's ``set_digest``, minus its crash when no close node answers."""
        target = Node(dkey)
        nearest = server.protocol.router.find_neighbors(target)
        if not nearest:
            return False
        closest = await _NodeCrawl(server.protocol, target, nearest, server.ksize, server.alpha).find()
        if not closest:
            return False
        if server.node.distance_to(target) < max(node.distance_to(target) for node in closest):
            server.storage[dkey] = value
        stored = await asyncio.gather(*(server.protocol.call_store(node, dkey, value) for node in closest))
        return any(answered and accepted is True for answered, accepted in stored)

    async def _read_index(self, key: str) -> dict[str, int]:
        merged: dict[str, int] = {}
        for value in await self._collect(key, lambda _value: False):
            for address, expires in _parse_index(value).items():
                merged[address] = max(expires, merged.get(address, 0))
        return _prune(merged, self._clock())

    async def _add_to_index(self, key: str, address: str, expires_at_ms: int) -> None:
        entries = await self._read_index(key)
        entries[address] = expires_at_ms
        entries = _prune(entries, self._clock(), keep=address)
        await self._store(key, json.dumps(entries, separators=(",", ":"), sort_keys=True))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _normal_address(text: object) -> str | None:
    """``text`` lowercased when it is a 0x-prefixed 20-byte hex address, else ``None``."""
    if not isinstance(text, str) or len(text) != 42 or not text.startswith("0x"):
        return None
    try:
        int(text[2:], 16)
    except ValueError:
        return None
    return text.lower()


def _verified(value: object, address: str, now_ms: int) -> HostAnnouncement | None:
    """The record in ``value`` when it verifies at ``now_ms`` and names ``address``; else ``None``."""
    if not isinstance(value, (str, bytes)):
        return None
    try:
        record = parse_announcement(value, now_ms)
    except (FabstirError, ValueError, TypeError) as error:  # untrusted input: anything odd is a drop
        log.debug("dropping DHT record for %s: %s", address, error)
        return None
    return record if record.host.lower() == address else None


def _parse_index(value: object) -> dict[str, int]:
    """The well-formed entries of an index value; anything else in it is ignored."""
    if not isinstance(value, (str, bytes)) or len(value) > MAX_VALUE_BYTES:
        return {}
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    return {key: expires for key, expires in obj.items()
            if _normal_address(key) == key and isinstance(expires, int) and not isinstance(expires, bool)}


def _prune(entries: dict[str, int], now_ms: int, keep: str | None = None) -> dict[str, int]:
    """Entries not yet expired and not beyond the longest TTL, at most MAX_INDEX_ENTRIES (``keep`` first)."""
    horizon = now_ms + MAX_TTL_S * 1000 + MAX_CLOCK_SKEW_MS
    live = {address: expires for address, expires in entries.items() if now_ms < expires <= horizon}
    ranked = sorted(live, key=lambda address: (address != keep, -live[address], address))
    return {address: live[address] for address in ranked[:MAX_INDEX_ENTRIES]}


class _Storage(ForgetfulStorage):  # type: ignore[misc]
    """kademlia's storage with a bound on the number of values (oldest dropped first)."""

    def __init__(self, *, ttl: int, max_items: int) -> None:
        super().__init__(ttl)
        self.max_items = max_items

    def __setitem__(self, key: bytes, value: object) -> None:
        super().__setitem__(key, value)
        while len(self.data) > self.max_items:
            self.data.popitem(last=False)


class _Protocol(KademliaProtocol):  # type: ignore[misc]
    """kademlia's protocol with a configurable RPC timeout, hardened against late answers and bad datagrams."""

    def __init__(self, source_node: Node, storage: _Storage, ksize: int, rpc_timeout: float) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = rpc_timeout

    def rpc_store(self, sender: tuple[str, int], nodeid: bytes, key: bytes, value: object) -> bool:
        if not isinstance(key, bytes) or len(key) != 20 or not isinstance(value, (str, bytes)):
            return False
        if len(value) > MAX_VALUE_BYTES:
            return False
        return bool(super().rpc_store(sender, nodeid, key, value))

    async def _solve_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        try:
            await super()._solve_datagram(datagram, address)
        except Exception as error:  # a malformed datagram from anyone must not leave a failed task behind
            log.debug("ignoring bad DHT datagram from %s: %r", address, error)

    async def _accept_request(self, msg_id: bytes, data: object, address: tuple[str, int]) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as error:
            log.debug("ignoring bad DHT request from %s: %r", address, error)

    def _accept_response(self, msg_id: bytes, data: object, address: tuple[str, int]) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            return
        future, timer = entry
        timer.cancel()
        if not future.done():  # the caller may have been cancelled by a timeout
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def abort_all(self) -> None:
        """Answer every outstanding RPC with "no response" (on stop)."""
        for future, timer in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()


class _Server(Server):  # type: ignore[misc]
    def __init__(self, *, ksize: int, alpha: int, node_id: bytes, storage: _Storage, rpc_timeout: float) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id, storage=storage)
        self._rpc_timeout = rpc_timeout

    def _create_protocol(self) -> _Protocol:
        return _Protocol(self.node, self.storage, self.ksize, self._rpc_timeout)


def _absorb(crawl: Any, responses: dict[bytes, Any], on_value: Callable[[object], None] | None) -> None:
    """Feed one round of find_node/find_value answers into ``crawl``; peers that failed are never asked again.

    (kademlia's own crawls drop a silent peer from the round's heap, but the next answer that names
    it puts it back, so one dead node can cost a lookup several RPC timeouts.)
    """
    gone = []
    for peer_id, response in responses.items():
        found = RPCFindResponse(response)
        if not found.happened():
            gone.append(peer_id)
            continue
        try:
            if on_value is not None and found.has_value():
                on_value(found.get_value())
            else:
                crawl.nearest.push([node for node in found.get_node_list() if node.id not in crawl.gone])
        except (AttributeError, KeyError, TypeError, ValueError):  # a malformed answer counts as none
            gone.append(peer_id)
    crawl.gone.update(gone)
    crawl.nearest.remove(gone)


class _NodeCrawl(NodeSpiderCrawl):  # type: ignore[misc]
    """kademlia's closest-nodes lookup, asking each silent peer once."""

    def __init__(self, protocol: _Protocol, node: Node, peers: list[Node], ksize: int, alpha: int) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.gone: set[bytes] = set()

    async def _nodes_found(self, responses: dict[bytes, Any]) -> list[Node]:
        _absorb(self, responses, None)
        if self.nearest.have_contacted_all():
            return list(self.nearest)
        return await self.find()  # type: ignore[no-any-return]


class _ValueCrawl(ValueSpiderCrawl):  # type: ignore[misc]
    """A value lookup that keeps every value seen and goes on past values ``accept`` refuses."""

    def __init__(self, protocol: _Protocol, node: Node, peers: list[Node], ksize: int, alpha: int,
                 accept: Callable[[object], bool]) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.accept = accept
        self.gone: set[bytes] = set()
        self.values: list[object] = []
        self.satisfied = False

    def _take(self, value: object) -> None:
        self.values.append(value)
        self.satisfied = self.accept(value) or self.satisfied

    async def _nodes_found(self, responses: dict[bytes, Any]) -> list[object]:
        _absorb(self, responses, self._take)
        if self.satisfied or self.nearest.have_contacted_all():
            return self.values
        return await self.find()  # type: ignore[no-any-return]


def parse_bootstrap(text: str | None) -> list[tuple[str, int]]:
    """``"127.0.0.1:4000,127.0.0.1:4001"`` as ``[(host, port), ...]``.

    Raises:
        ConfigError: an entry without a valid port.
    """
    peers = []
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"DHT bootstrap entry {entry!r} must be host:port")
        peers.append((host, int(port)))
    return peers
