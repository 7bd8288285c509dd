"""``dht``: latency of a host-record lookup over a Kademlia DHT of 20 nodes on 127.0.0.1 (UDP).

The nodes join in a chain (each bootstraps from the one before), ``hosts`` signed records are
announced from random nodes, then each timed lookup is ``DhtNode.get_record`` of a random host from a
random node that does not hold that record itself (so every lookup crosses the network: find_value
rounds, then signature and TTL checks). ``ksize`` is small (5) so that a record lives on a few of the
20 nodes, as it would in a large network; with kademlia's default of 20 every node would hold every
record and a lookup would never leave the process. ``search_*`` time ``search_by_capability`` (index
read from every close node, then one verified lookup per listed host). Seeded: the same choices every run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

from kademlia.utils import digest
from nacl.signing import SigningKey

from common import log, percentile, rounded
from fabstir.discovery.dht import DhtNode, host_key
from fabstir.protocol.announcement import HostAnnouncement, sign_announcement

SEED = 7
KSIZE = 5
SEARCHES = 20


def _records(hosts: int, rng: random.Random) -> list[HostAnnouncement]:
    now_ms = time.time_ns() // 1_000_000
    return [
        sign_announcement(SigningKey(rng.randbytes(32)), host=f"0x{rng.getrandbits(160):040x}",
                          api_url=f"http://127.0.0.1:{9000 + i}", now_ms=now_ms, ttl_s=600, models=(f"model-{i % 3}",),
                          price_per_token=rng.randint(1_000, 100_000), capabilities=("e2e",))
        for i in range(hosts)
    ]


def _holds(node: DhtNode, address: str) -> bool:
    """Whether ``node`` stores the record itself (peeks at kademlia's storage: benchmark-only)."""
    server = node._server
    return server is not None and server.storage.get(digest(host_key(address))) is not None


async def measure_dht_lookups(nodes: int = 20, lookups: int = 100, hosts: int = 20, *,
                              ksize: int = KSIZE) -> dict[str, object]:
    """Start ``nodes`` DHT nodes, announce ``hosts`` records, time ``lookups`` remote lookups; stop every node."""
    rng = random.Random(SEED)
    network: list[DhtNode] = []
    try:
        for i in range(nodes):
            node = DhtNode(ksize=ksize, rpc_timeout=2.0)
            await node.start([network[-1].address] if i else ())
            network.append(node)
        log(f"dht: {nodes} nodes up (ksize {ksize})")
        records = _records(hosts, rng)
        for record in records:
            await rng.choice(network).announce_capabilities(record)
        log(f"dht: {hosts} hosts announced")
        remote = [(node, record) for node in network for record in records if not _holds(node, record.host)]
        if not remote:
            raise ValueError(f"ksize {ksize} >= {nodes} nodes: every node holds every record, no lookup to time")
        samples = []
        for _ in range(lookups):
            node, record = rng.choice(remote)
            started = time.perf_counter()
            found = await node.get_record(record.host)
            samples.append((time.perf_counter() - started) * 1000)
            if found != record:
                raise RuntimeError(f"lookup of {record.host} returned {found!r}")
        log(f"dht: {lookups} lookups, p50 {percentile(samples, 50):.2f} ms")
        searches = []
        for _ in range(SEARCHES):
            started = time.perf_counter()
            found_hosts = await rng.choice(network).search_by_capability("e2e")
            searches.append((time.perf_counter() - started) * 1000)
            if len(found_hosts) != hosts:
                raise RuntimeError(f"search found {len(found_hosts)} of {hosts} hosts")
    finally:
        for node in network:
            await node.stop()
    return {"dht_nodes": nodes, "dht_lookups": lookups, "dht_hosts": hosts, "dht_ksize": ksize,
            "dht_p50_ms": rounded(percentile(samples, 50), 3), "dht_p80_ms": rounded(percentile(samples, 80), 3),
            "dht_p99_ms": rounded(percentile(samples, 99), 3),
            "dht_search_p50_ms": rounded(percentile(searches, 50), 3),
            "dht_search_p99_ms": rounded(percentile(searches, 99), 3)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure_dht_lookups()), indent=2))
