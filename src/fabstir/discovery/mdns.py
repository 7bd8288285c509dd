"""mDNS discovery on the local network: hosts announce signed records, clients browse for them.

Theory of operation. A host registers one service of type :data:`SERVICE_TYPE`, named
after its address, whose TXT record carries the whole signed
:class:`~fabstir.protocol.announcement.HostAnnouncement`. A TXT entry holds at most 255
bytes, so the record's JSON is split into numbered chunks (``n`` = count, ``r0`` …
``r{n-1}``); readable keys (``host``, ``api``, ``price``, ``models``, ``key`` = Ed25519
public key) sit beside them for people and tools. :func:`encode_txt` and
:func:`decode_txt` are the pure core; a reader trusts only the reassembled, verified
record and drops it when a readable key disagrees with it. A heartbeat is
:meth:`MdnsAnnouncer.update` with a freshly signed record (the TXT record is replaced).

Safety: every ``Zeroconf`` here is built with ``interfaces=[interface]`` and
``IPVersion.V4Only``, and ``interface`` must be a loopback address unless
``allow_non_loopback=True``. zeroconf then sends only from a socket bound to that
address and joins the multicast group only there. Its shared 5353 listener, which
zeroconf binds to the wildcard address, is bound here to the mDNS group address
``224.0.0.251`` instead (on Linux a socket bound to a group receives only that group's
datagrams), so nothing here listens on all interfaces; and it accepts only the groups
it joined itself (``IP_MULTICAST_ALL`` off).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import zeroconf._core as zc_core
import zeroconf._utils.net as zc_net
from zeroconf import DNSQuestionType, IPVersion, ServiceStateChange, Zeroconf, current_time_millis
from zeroconf._dns import DNSText  # exported by zeroconf but missing from its __all__
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from fabstir._clock import wall_clock_ms
from fabstir.discovery.selection import HostCandidate, Requirements
from fabstir.discovery.sources import candidate_from_announcement
from fabstir.errors import ConfigError
from fabstir.protocol.announcement import (
    MAX_ANNOUNCEMENT_BYTES,
    AnnouncementError,
    HostAnnouncement,
    parse_announcement,
)
from fabstir.protocol.signing import SignatureError

__all__ = [
    "DEFAULT_INTERFACE",
    "DEFAULT_TIMEOUT_S",
    "MdnsAnnouncer",
    "MdnsDiscovery",
    "SERVICE_TYPE",
    "check_interface",
    "decode_txt",
    "discover_local_nodes",
    "encode_txt",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_fabstir._tcp.local."
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_TIMEOUT_S = 1.0
"""How long :class:`MdnsDiscovery` browses (loopback answers arrive in well under a second)."""
CHUNK_BYTES = 250
"""JSON bytes per ``r<i>`` TXT entry: ``r<i>=`` plus the chunk stays within the 255-byte entry limit."""
_MAX_CHUNKS = -(-MAX_ANNOUNCEMENT_BYTES // CHUNK_BYTES) + 1
_READABLE_BYTES = 200
_TYPE_TXT, _CLASS_IN = 16, 1  # DNS record type TXT, class IN
_MDNS_GROUP = "224.0.0.251"
_AGGREGATION_S = 0.6  # zeroconf holds multicast answers up to 500 ms to aggregate them
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux <linux/in.h>; not exported by Python 3.11



# -- pure core -------------------------------------------------------------------------------------------------


def encode_txt(record: HostAnnouncement) -> dict[str, str]:
    """The TXT properties that carry ``record``: chunked signed JSON plus readable keys.

    Raises:
        AnnouncementError: when the record is too large to announce.
    """
    data = record.to_json()  # ASCII (json.dumps escapes non-ASCII), so a byte split is a character split
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnouncementError(f"announcement exceeds {MAX_ANNOUNCEMENT_BYTES} bytes")
    chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    props = {"v": "1", "host": record.host, "api": _clip(record.api_url), "price": str(record.price_per_token),
             "models": _clip(",".join(record.models)), "key": record.signing_key, "n": str(len(chunks))}
    props.update({f"r{i}": chunk for i, chunk in enumerate(chunks)})
    return props


def decode_txt(props: Mapping[str, str | None], now_ms: int) -> HostAnnouncement:
    """Reassemble, verify and cross-check the record carried by TXT ``props`` at ``now_ms``.

    Raises:
        AnnouncementError: malformed, missing chunks, readable keys that disagree with the signed record,
            or expired / not yet valid (see :func:`~fabstir.protocol.announcement.parse_announcement`).
        SignatureError: the record's signature does not verify.
    """
    count = props.get("n") or ""
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= _MAX_CHUNKS:
        raise AnnouncementError("mDNS TXT record has no valid chunk count 'n'")
    chunks = [props.get(f"r{i}") for i in range(int(count))]
    if any(chunk is None for chunk in chunks):
        raise AnnouncementError("mDNS TXT record is missing a chunk")
    record = parse_announcement("".join(c for c in chunks if c is not None), now_ms)
    expected = {"host": record.host.lower(), "api": _clip(record.api_url), "price": str(record.price_per_token),
                "key": record.signing_key}
    for name, value in expected.items():
        if (props.get(name) or "").lower() != value.lower():
            raise AnnouncementError(f"mDNS TXT key {name!r} disagrees with the signed record")
    return record


def _txt_properties(text: bytes) -> dict[str, str | None]:
    """Decode a TXT record's wire bytes (length-prefixed ``key=value`` strings); the first of a key wins."""
    props: dict[str, str | None] = {}
    i = 0
    while i < len(text):
        item, i = text[i + 1:i + 1 + text[i]], i + 1 + text[i]
        key, sep, value = item.partition(b"=")
        props.setdefault(key.decode(errors="replace"), value.decode(errors="replace") if sep else None)
    return props


def _verified(name: str, text: bytes, now_ms: int) -> HostAnnouncement | None:
    """The record in TXT ``text`` of service ``name``, or ``None`` (logged) when it does not verify."""
    try:
        return decode_txt(_txt_properties(text), now_ms)
    except SignatureError as exc:
        log.warning("dropping mDNS service %s: %s", name, exc)
    except AnnouncementError as exc:
        level = logging.DEBUG if exc.code == "ANNOUNCEMENT_EXPIRED" else logging.WARNING
        log.log(level, "dropping mDNS service %s: %s", name, exc)
    return None


def _clip(text: str) -> str:
    return text if len(text.encode()) <= _READABLE_BYTES else text.encode()[:_READABLE_BYTES].decode(errors="ignore")


def check_interface(interface: str, *, allow_non_loopback: bool = False) -> str:
    """``interface`` if it is an IPv4 address mDNS may bind to (loopback unless ``allow_non_loopback``).

    Raises:
        ConfigError: not an IPv4 address, or not loopback without ``allow_non_loopback=True``.
    """
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        raise ConfigError(f"mDNS interface must be an IPv4 address, got {interface!r}") from None
    if address.version != 4:
        raise ConfigError(f"mDNS runs over IPv4 only, got {interface!r}")
    if not address.is_loopback and not allow_non_loopback:
        raise ConfigError(f"mDNS interface {interface!r} is not loopback; pass allow_non_loopback=True to use it")
    return interface


def _service_name(record: HostAnnouncement) -> str:
    return f"fabstir-{record.host[2:].lower()}.{SERVICE_TYPE}"


def _service_info(record: HostAnnouncement, interface: str, port: int | None, name: str) -> AsyncServiceInfo:
    url = urlsplit(record.api_url)
    port = port if port is not None else url.port or (443 if url.scheme in ("https", "wss") else 80)
    ttl = min(record.ttl_s, 4500)
    return AsyncServiceInfo(SERVICE_TYPE, name, port=port, properties=encode_txt(record),
                            server=f"fabstir-{record.host[2:].lower()}.local.", host_ttl=ttl, other_ttl=ttl,
                            addresses=[socket.inet_aton(interface)])


# -- I/O -------------------------------------------------------------------------------------------------------


def _group_bound_sockets(interfaces: Any, unicast: bool, ip_version: IPVersion,
                         apple_p2p: bool = False) -> tuple[socket.socket | None, list[socket.socket]]:
    """zeroconf's ``create_sockets``, with the shared listener bound to the mDNS group, not the wildcard."""
    listen = zc_net.new_socket(bind_addr=(_MDNS_GROUP,), ip_version=ip_version, apple_p2p=apple_p2p)
    if listen is None:
        raise ConfigError(f"cannot bind an mDNS listener to {_MDNS_GROUP}:5353")
    interfaces = zc_net.normalize_interface_choice(interfaces, ip_version)
    responders = [zc_net.add_interface(listen, i, apple_p2p=apple_p2p, unicast=unicast) for i in interfaces]
    return listen, [r for r in responders if r is not None]


def _new_zeroconf(interface: str) -> Zeroconf:
    # zeroconf has no setting for where its listener binds; its socket factory is swapped for the duration of
    # this synchronous constructor (zeroconf._core looks the name up at call time).
    core: Any = zc_core
    original = core.create_sockets
    core.create_sockets = _group_bound_sockets
    try:
        return Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only, use_asyncio=True)
    finally:
        core.create_sockets = original


async def _open_zeroconf(interface: str) -> AsyncZeroconf:
    """A started AsyncZeroconf bound to ``interface`` only (IPv4), attached to the running loop."""
    aiozc = AsyncZeroconf(zc=_new_zeroconf(interface))
    await aiozc.zeroconf.async_wait_for_start()
    if sys.platform.startswith("linux"):
        for reader in aiozc.zeroconf.engine.readers:
            if reader.sock_name[0] == _MDNS_GROUP:
                reader.sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
    return aiozc


class MdnsAnnouncer:
    """Announces one host's signed record over mDNS until :meth:`stop`; use with ``async with``.

    Args:
        record: the signed announcement to publish (re-sign and :meth:`update` before its TTL runs out).
        interface: IPv4 address to bind to; loopback unless ``allow_non_loopback``.
        port: SRV port; defaults to the port of ``record.api_url``.
        allow_non_loopback: permit a non-loopback ``interface`` (announces to that network).

    Raises:
        ConfigError: ``interface`` is refused (see :func:`check_interface`).
    """

    def __init__(self, record: HostAnnouncement, *, interface: str = DEFAULT_INTERFACE, port: int | None = None,
                 allow_non_loopback: bool = False) -> None:
        self.interface = check_interface(interface, allow_non_loopback=allow_non_loopback)
        self.record = record
        self.port = port
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._announcing: Awaitable[object] | None = None

    @property
    def zeroconf(self) -> AsyncZeroconf | None:
        """The AsyncZeroconf in use while started (for inspection), else ``None``."""
        return self._aiozc

    @property
    def service_name(self) -> str | None:
        """The registered mDNS instance name (zeroconf may add ``-2`` on a conflict), or ``None``."""
        return self._info.name if self._info else None

    async def start(self) -> None:
        """Probe for the name and register the service; returns once it is registered and being announced."""
        if self._aiozc is not None:
            return
        self._aiozc = await _open_zeroconf(self.interface)
        self._info = _service_info(self.record, self.interface, self.port, _service_name(self.record))
        try:
            self._announcing = await self._aiozc.async_register_service(self._info, allow_name_change=True)
        except BaseException:
            await self.stop()
            raise

    async def update(self, record: HostAnnouncement) -> None:
        """Publish a re-signed ``record`` for the same host (a heartbeat): readers see the new TXT record.

        Raises:
            ConfigError: ``record`` is for another host, or the announcer is not started.
        """
        if record.host.lower() != self.record.host.lower():
            raise ConfigError("an mDNS update must keep the host address; start another announcer instead")
        if self._aiozc is None or self._info is None:
            raise ConfigError("MdnsAnnouncer.update() before start()")
        self.record = record
        self._info = _service_info(record, self.interface, self.port, self._info.name)
        self._announcing = await self._aiozc.async_update_service(self._info)

    async def stop(self) -> None:
        """Send goodbyes (readers drop the host) and close the Zeroconf instance. Idempotent."""
        aiozc, info, announcing = self._aiozc, self._info, self._announcing
        self._aiozc = self._info = self._announcing = None
        if aiozc is None:
            return
        if isinstance(announcing, asyncio.Future):
            announcing.cancel()
        if info is not None:
            with contextlib.suppress(Exception):
                await (await aiozc.async_unregister_service(info))
                # zeroconf may still hold multicast answers to recent queries (aggregated up to 500 ms); one sent
                # after the goodbye would put the host back in caches, so say goodbye again once they are out.
                await asyncio.sleep(_AGGREGATION_S)
                aiozc.zeroconf.async_send(aiozc.zeroconf.generate_service_broadcast(info, 0))
        await aiozc.async_close()

    async def aclose(self) -> None:
        """Same as :meth:`stop`."""
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class MdnsDiscovery:
    """A :class:`~fabstir.discovery.sources.DiscoverySource` that browses mDNS for announced hosts.

    One AsyncZeroconf and one service browser per object, opened on first use and closed by :meth:`aclose`
    (or ``async with``). The browser keeps running between calls, so the first :meth:`discover` waits until
    ``timeout_s`` after opening and later calls answer at once with what is known (hosts that arrive announce
    themselves; goodbyes and lapsed TTLs remove them).

    Args:
        interface: IPv4 address to bind to; loopback unless ``allow_non_loopback``.
        timeout_s: how long the browser listens before the first :meth:`discover` answers.
        allow_non_loopback: permit a non-loopback ``interface`` (queries that network).
        clock: unix-milliseconds clock used to check record TTLs.

    Raises:
        ConfigError: ``interface`` is refused (see :func:`check_interface`), or ``timeout_s`` is not positive.
    """

    name = "mdns"

    def __init__(self, *, interface: str = DEFAULT_INTERFACE, timeout_s: float = DEFAULT_TIMEOUT_S,
                 allow_non_loopback: bool = False, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.interface = check_interface(interface, allow_non_loopback=allow_non_loopback)
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self._clock = clock
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._names: set[str] = set()
        self._ready_at = 0.0

    @property
    def zeroconf(self) -> AsyncZeroconf | None:
        """The AsyncZeroconf in use once opened (for inspection), else ``None``."""
        return self._aiozc

    async def open(self) -> AsyncZeroconf:
        """Open (once) the AsyncZeroconf and start browsing; :meth:`discover` calls this itself."""
        if self._aiozc is None:
            aiozc = await _open_zeroconf(self.interface)
            self._names = set()
            # Multicast questions (QM) from the first query: every zeroconf instance on this machine binds
            # 127.0.0.1:5353, and the kernel would hand a unicast (QU) answer to just one of them, often not
            # ours. Multicast answers may be held up to 0.5 s to be aggregated: hence the 1 s default window.
            self._browser = AsyncServiceBrowser(aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change],
                                                question_type=DNSQuestionType.QM)
            self._ready_at = asyncio.get_running_loop().time() + self.timeout_s
            self._aiozc = aiozc
        return self._aiozc

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self._names.discard(name)
        else:
            self._names.add(name)

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """The verified hosts (one per address, newest record), by address; waits out the first window only.

        Records that fail to verify, are expired or malformed are dropped and logged.
        """
        aiozc = await self.open()
        wait = self._ready_at - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        names = sorted(self._names)
        texts = await asyncio.gather(*(self._resolve(aiozc.zeroconf, name) for name in names))
        now_ms = self._clock()
        newest: dict[str, HostAnnouncement] = {}
        for name, name_texts in zip(names, texts):
            for text in name_texts:
                record = _verified(name, text, now_ms)
                held = newest.get(record.host.lower()) if record else None
                if record is not None and (held is None or record.issued_at_ms > held.issued_at_ms):
                    newest[record.host.lower()] = record
        hosts = [candidate_from_announcement(r, self.name) for r in newest.values()]
        return sorted((h for h in hosts if requirements is None or requirements.accepts(h)), key=lambda h: h.address)

    async def _resolve(self, zc: Zeroconf, name: str) -> list[bytes]:
        """Every live TXT record cached for ``name`` (a heartbeat can briefly leave the old one beside the new)."""
        # QM for the same reason as in open(); answered from the cache when the TXT record is already there.
        await AsyncServiceInfo(SERVICE_TYPE, name).async_request(zc, max(int(self.timeout_s * 1000), 200),
                                                                 question_type=DNSQuestionType.QM)
        now = current_time_millis()
        texts = [r.text for r in zc.cache.get_all_by_details(name, _TYPE_TXT, _CLASS_IN)
                 if isinstance(r, DNSText) and not r.is_expired(now)]
        if not texts:
            log.debug("mDNS service %s has no TXT record", name)
        return texts

    async def aclose(self) -> None:
        """Stop browsing and close the AsyncZeroconf. Idempotent."""
        aiozc, browser = self._aiozc, self._browser
        self._aiozc = self._browser = None
        if browser is not None:
            await browser.async_cancel()
        if aiozc is not None:
            await aiozc.async_close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


async def discover_local_nodes(timeout_s: float = DEFAULT_TIMEOUT_S, interface: str = DEFAULT_INTERFACE,
                               requirements: Requirements | None = None) -> list[HostCandidate]:
    """Browse mDNS on ``interface`` (loopback only) for ``timeout_s`` and return the verified hosts.

    Raises:
        ConfigError: ``interface`` is not a loopback IPv4 address (use :class:`MdnsDiscovery` with
            ``allow_non_loopback=True`` for a real network).
    """
    async with MdnsDiscovery(interface=interface, timeout_s=timeout_s) as discovery:
        return await discovery.discover(requirements)
