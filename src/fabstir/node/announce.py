"""The node announcing itself to discovery sources: the HTTP discovery service, mDNS and the DHT.

Every beat (``announce_ttl / 3`` seconds) the node signs a fresh
:class:`~fabstir.protocol.announcement.HostAnnouncement` with its Ed25519 key
(the one that signs receipts and that a registered host publishes on chain as
``ed25519PublicKey``) and pushes it to each configured target. A target that is
down is logged and retried on the next beat; the others are unaffected. On
shutdown the mDNS service is withdrawn and the beats stop, so the record lapses
at its TTL everywhere else.

The ``host`` a record claims is the billing account's address for a paid node.
A free node has no chain address, so it claims one derived from its signing key
(the last 20 bytes of keccak256 of the key), stable for as long as the key is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fabstir._clock import wall_clock_ms
from fabstir.discovery.dht import parse_bootstrap
from fabstir.protocol.announcement import HostAnnouncement, sign_announcement

if TYPE_CHECKING:
    from fabstir.node.runtime import NodeRuntime

__all__ = ["NodeAnnouncer", "TargetStatus", "address_for_signing_key", "parse_bootstrap"]

log = logging.getLogger(__name__)


def address_for_signing_key(public_key_hex: str) -> str:
    """The checksum address a free node claims: last 20 bytes of keccak256 of its Ed25519 public key."""
    return to_checksum_address(keccak(bytes.fromhex(public_key_hex))[-20:])


@dataclasses.dataclass
class TargetStatus:
    """Beats that reached one target, beats that failed, and the last error."""

    name: str
    beats: int = 0
    failures: int = 0
    last_error: str | None = None


class NodeAnnouncer:
    """Announces a running node to the targets its config names; :meth:`start`, then :meth:`aclose`.

    Args:
        runtime: the node (its config, signing key, model and billing).
        url: the URL clients should use (``config.public_url`` wins when set).
    """

    def __init__(self, runtime: NodeRuntime, url: str) -> None:
        self.runtime = runtime
        config = runtime.config
        self.url = config.public_url or url
        self.interval_s = max(config.announce_ttl / 3, 0.2)
        self.status: dict[str, TargetStatus] = {}
        self.record: HostAnnouncement | None = None
        self._http: Any = None
        self._mdns: Any = None
        self._dht: Any = None
        self._dht_peers: list[tuple[str, int]] = []
        self._dht_joined = False
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def wanted(runtime: NodeRuntime) -> bool:
        """Whether the config names any target."""
        config = runtime.config
        return bool(config.discovery_url or config.announce_mdns or config.dht_bootstrap or config.dht_port)

    @property
    def host_address(self) -> str:
        billing = self.runtime.billing
        if billing is not None:
            return to_checksum_address(billing.host.address)
        return address_for_signing_key(self.runtime.signing_public_key)

    @property
    def dht_address(self) -> tuple[str, int] | None:
        """Where this node's DHT peer listens (others can bootstrap from it), once started."""
        return self._dht.address if self._dht is not None else None

    def make_record(self, now_ms: int) -> HostAnnouncement:
        """A fresh record issued at ``now_ms``."""
        runtime, config = self.runtime, self.runtime.config
        models = [runtime.inference.model_id]
        billing = runtime.billing
        if billing is not None and billing.host.model_id is not None:
            models.append("0x" + billing.host.model_id.hex())
        return sign_announcement(
            runtime.signing_key, host=self.host_address, api_url=self.url, now_ms=now_ms, ttl_s=config.announce_ttl,
            models=models, price_per_token=config.announce_price, capabilities=runtime.features,
            region=config.announce_region)

    async def start(self) -> None:
        """Open the configured targets, announce once, and keep beating in the background."""
        config = self.runtime.config
        if config.discovery_url:
            from fabstir.discovery.http_client import HttpDiscoveryClient

            self._http = HttpDiscoveryClient(config.discovery_url, retries=1, cache_ttl_s=0)
            self.status["http"] = TargetStatus("http")
        if config.dht_bootstrap or config.dht_port:
            from fabstir.discovery.dht import DhtNode

            # Listen first, join on the beats: a bootstrap node that is down must not stop the node from serving.
            self._dht_peers = parse_bootstrap(config.dht_bootstrap)
            self._dht = DhtNode(port=config.dht_port)
            await self._dht.start()
            self.status["dht"] = TargetStatus("dht")
        if config.announce_mdns:
            self.status["mdns"] = TargetStatus("mdns")
        await self.beat()
        self._task = asyncio.create_task(self._beat_forever())

    async def beat(self) -> HostAnnouncement:
        """Sign a fresh record and push it to every target (a failing target is logged and counted)."""
        record = self.record = self.make_record(wall_clock_ms())
        for name in list(self.status):
            try:
                await self._push(name, record)
            except Exception as exc:  # one target down must not stop the others or the node
                status = self.status[name]
                status.failures += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("announcing to %s failed (next beat in %.0f s): %s", name, self.interval_s,
                            status.last_error)
            else:
                self.status[name].beats += 1
                self.status[name].last_error = None
        return record

    async def _push(self, name: str, record: HostAnnouncement) -> None:
        if name == "http":
            await self._http.announce(record)
        elif name == "dht":
            if not self._dht_joined and self._dht_peers:
                await self._dht.bootstrap(self._dht_peers)
                self._dht_joined = True
            await self._dht.announce_capabilities(record)
        elif self._mdns is None:
            from fabstir.discovery.mdns import MdnsAnnouncer

            mdns = MdnsAnnouncer(record, interface=self.runtime.config.mdns_interface)
            await mdns.start()
            self._mdns = mdns
        else:
            await self._mdns.update(record)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.beat()

    async def aclose(self) -> None:
        """Stop beating, withdraw the mDNS service, leave the DHT and close the HTTP client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for closer in (self._mdns and self._mdns.stop, self._dht and self._dht.stop,
                       self._http and self._http.aclose):
            if closer:
                with contextlib.suppress(Exception):
                    await closer()
        self._mdns = self._dht = self._http = None
