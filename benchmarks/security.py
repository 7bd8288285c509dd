"""``security``: tokens/s with everything on vs plain, same model and prompt, one run; per-operation costs.

- secure: a paid node (embedded chain) with ``require_auth``; the SDK authenticates as the depositor
  (JWT), encrypts end to end with the host's published key, and verifies every signed receipt.
  Every secure run is a fresh session (its own connection and history) on one session job,
  created before the warm-ups. No chain work may run while either side is timed (on the embedded
  chain it would run on py-evm in this process): billing's claims are out of reach
  (``min_tokens``, ``checkpoint_tokens``), and sessions are closed only after the last run, so the
  minimum charge a closed session owes is never due during the measurement. Every checkpoint the
  host submits is recorded; one that lands in a timed run fails the benchmark
  (``checkpoints_during_runs`` is 0). The ``billing`` benchmark measures checkpoints.
- plain: the same model behind a node with encryption off and the extensions off (no receipts, no
  auth), the SDK in plaintext.

Runs alternate (plain, secure, secure, plain, …); medians are reported. The per-operation costs
(``sign_us``, ``verify_us``, ``encrypt_chunk_us``, ``decrypt_chunk_us``) are timed in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
import timeit
import uuid
from pathlib import Path

from nacl.signing import SigningKey

from common import Sample, Settings, log, rounded, summarize, timed_prompt
from fabstir.chain.backend import Chain
from fabstir.chain.metadata import build_host_metadata
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import register_host
from fabstir.node.runtime import NodeRuntime
from fabstir.node.server import serve_node
from fabstir.protocol.e2e import ClientE2ESession, ServerE2ESession
from fabstir.protocol.signing import Receipt, sign_receipt, text_digest, verify_receipt
from fabstir.sdk import FabstirSDK
from paid import CheckpointLog, PaidMarket, deploy_paid_market, node_config

PRICE = 2_000_000_000


def _operation_costs() -> dict[str, float]:
    key = SigningKey(b"\x03" * 32)
    text = "Once upon a time" * 8
    receipt = sign_receipt(Receipt(host="0x" + "11" * 20, model="m", session_id="1", message_index=0, tokens=256,
                                   price_per_token=PRICE, text_sha256=text_digest(text), key=""), key)
    server = ServerE2ESession(b"\x04" * 32)
    payloads = [server.encrypt_chunk(" the") for _ in range(2000)]

    def decrypt_all() -> None:
        fresh = ClientE2ESession(b"\x04" * 32)
        fresh.encrypt_message("a prompt")  # a response is now expected: chunk_0, chunk_1, ...
        for payload in payloads:
            fresh.decrypt_chunk(payload)

    n = 2000
    return {
        "sign_us": timeit.timeit(lambda: sign_receipt(receipt, key), number=n) / n * 1e6,
        "verify_us": timeit.timeit(lambda: verify_receipt(receipt, text=text, tokens=256), number=n) / n * 1e6,
        "encrypt_chunk_us": timeit.timeit(lambda: server.encrypt_chunk(" the"), number=n) / n * 1e6,
        "decrypt_chunk_us": timeit.timeit(decrypt_all, number=1) / n * 1e6,
    }


async def run_security(settings: Settings) -> dict[str, object]:
    """Measure and return the ``security`` JSON object."""
    base = node_config(settings)
    chain = Chain.embedded(funded_accounts=3)
    try:
        paid = await deploy_paid_market(chain, settings.model)
        with tempfile.TemporaryDirectory(prefix="fabstir-bench-") as scratch:
            host = HostChain(paid.market, paid.host, paid.model)
            checkpoints = CheckpointLog(host)
            billing = BillingService(host, Path(scratch) / "l.db",
                                     min_tokens=10**12, checkpoint_tokens=10**12, complete_sessions=False)
            secure_config = dataclasses.replace(base, require_auth=True)
            plain_config = dataclasses.replace(base, encryption=False, extensions=False)
            async with serve_node(secure_config, billing=billing) as secure, serve_node(plain_config) as plain:
                runtime = secure.runtime
                await register_host(paid.market, paid.host, api_url=secure.url, models=[paid.model],
                                    metadata=build_host_metadata("bench", publicKey=runtime.e2e_public_key,
                                                                 ed25519PublicKey=runtime.signing_public_key),
                                    min_price_native=PRICE, min_price_stable=10_000)
                samples, windows = await _alternate(settings, paid, secure.url, plain.url, runtime)
    finally:
        chain.close()
    secure_tps, secure_ttft = summarize(samples["secure"])
    plain_tps, plain_ttft = summarize(samples["plain"])
    if any(a.text != b.text for a, b in zip(samples["secure"], samples["plain"])):
        raise RuntimeError("secure and plain runs produced different text")
    during = checkpoints.during(windows, refused_too=True)
    if during:
        raise RuntimeError(f"{during} checkpoint(s) ran on the chain during timed runs: the comparison is void")
    log(f"security: secure {secure_tps:.0f} tok/s vs plain {plain_tps:.0f} tok/s")
    return {
        "secure_tokens_per_s": rounded(secure_tps, 1),
        "plain_tokens_per_s": rounded(plain_tps, 1),
        "ratio": rounded(secure_tps / plain_tps, 3),
        "secure_ttft_ms": rounded(secure_ttft, 3),
        "plain_ttft_ms": rounded(plain_ttft, 3),
        "checkpoints_during_runs": during,
        "checkpoints_submitted": checkpoints.submitted,
        **{k: rounded(v, 2) for k, v in _operation_costs().items()},
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
        **settings.model_info(),
    }


async def _alternate(settings: Settings, paid: PaidMarket, secure_url: str, plain_url: str, runtime: NodeRuntime
                     ) -> tuple[dict[str, list[Sample]], list[tuple[float, float]]]:
    """The samples of each side, and every timed window (start, end) of either side."""
    samples: dict[str, list[Sample]] = {"secure": [], "plain": []}
    windows: list[tuple[float, float]] = []
    sdk_secure = FabstirSDK(chain=paid.chain, deployment=paid.market.deployment, account=paid.client)
    sdk_plain = FabstirSDK(encryption=False)
    keys = {"host_public_key": runtime.e2e_public_key, "host_signing_key": runtime.signing_public_key}
    async with sdk_secure, sdk_plain:
        job = await sdk_secure.sessions.create_session(paid.host.address, paid.model, 10**15, PRICE)
        opened: list[tuple[FabstirSDK, str]] = []
        try:
            for number in range(settings.warmup + settings.runs):
                order = ("plain", "secure") if number % 2 == 0 else ("secure", "plain")
                for side in order:
                    session = f"bench-{side}-{uuid.uuid4().hex[:12]}"  # fresh history every run
                    if side == "secure":
                        await sdk_secure.inference.connect_to_session(session, secure_url, job_id=job.job_id,
                                                                      **keys)  # type: ignore[arg-type]
                        opened.append((sdk_secure, session))
                    else:
                        await sdk_plain.inference.connect_to_session(session, plain_url)
                        opened.append((sdk_plain, session))
                    await asyncio.sleep(settings.settle)
                    started = time.perf_counter()
                    sample = await timed_prompt(opened[-1][0], session, settings)
                    windows.append((started, time.perf_counter()))
                    if number >= settings.warmup:
                        samples[side].append(sample)
        finally:  # closed only now: a closed session's minimum charge would be checkpointed on py-evm
            for sdk, session in opened:
                await sdk.inference.close(session)
    return samples, windows
