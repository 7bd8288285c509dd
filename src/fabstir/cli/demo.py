"""``fabstir demo``: the whole paid flow on one machine.

An in-process EVM with our contracts; a host node that registers and stakes;
a client that finds it through unified discovery (the on-chain registry), picks
it by strategy, opens a session with a deposit, streams a multi-turn chat over
the real WebSocket, and leaves; the host checkpoints and settles; a receipt
shows where every unit of the deposit went. ``--free`` skips the chain (the foundation's plain demo).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.deploy import deploy_marketplace, deploy_steps
from fabstir.chain.jobs import usage_record
from fabstir.chain.metadata import build_host_metadata
from fabstir.chain.money import format_units
from fabstir.chain.tokens import mint
from fabstir.cli.output import key_value_table, print_json, print_table, progress_bar
from fabstir.cli.serve import unpack_default_model
from fabstir.node.billing import MIN_PROVEN_TOKENS, BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.host_chain import HostChain
from fabstir.node.models import resolve_model_path
from fabstir.node.registration import earnings, register_host
from fabstir.node.server import serve_node
from fabstir.sdk import FabstirSDK, InferenceResult, PromptOptions

__all__ = ["DEFAULT_PROMPTS", "billing_note", "run_demo", "summarize"]

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "What is that city famous for?",
    "Thank you! Say goodbye in one short sentence.",
)
MODEL_REPO = "local"
HOST_PRICE_WEI = 2_000_000_000
"""The demo host's minimum price: 2,000,000 wei per token, in the x1000 precision."""
DEPOSIT_WEI = 10**15
"""0.001 ETH, enough for 500,000 tokens at the demo price."""
PROOF_INTERVAL = 100


def _progress(text: str) -> None:
    print(f"[fabstir] {text}", file=sys.stderr, flush=True)


async def run_demo(args: argparse.Namespace) -> int:
    config = NodeConfig(port=0, model_path=args.model, parallel=1, template=args.template or "plain")
    prompts = tuple(args.prompts or DEFAULT_PROMPTS)
    options = PromptOptions(max_tokens=args.max_tokens, temperature=args.temperature)
    started = time.perf_counter()
    config = await unpack_default_model(config)
    if args.free:
        async with serve_node(config, progress=_progress) as server:
            model = server.runtime.inference.model_id
            results = await _chat(FabstirSDK(default_options=options), f"demo-{uuid.uuid4().hex[:8]}", None,
                                  server.url, prompts)
        summary = summarize(server.url, model, results, time.perf_counter() - started)
    else:
        summary = await _paid_demo(config, prompts, options, args.dispute_window, started)
    _print_summary(summary, as_json=args.json)
    return 0


async def _paid_demo(config: NodeConfig, prompts: tuple[str, ...], options: PromptOptions, dispute_window: int,
                     started: float) -> dict[str, Any]:
    owner, host, client = dev_account(0), dev_account(1), dev_account(2)
    model_path = await asyncio.to_thread(resolve_model_path, config.model_path, _progress)
    config = dataclasses.replace(config, model_path=str(model_path))
    model_file = model_path.name
    model = model_id(MODEL_REPO, model_file)
    digest = await asyncio.to_thread(_sha256, model_path)
    chain = Chain.embedded(funded_accounts=3)
    try:
        with progress_bar("starting an in-process EVM and deploying the marketplace contracts",
                          deploy_steps(1)) as advance:
            deployment = await deploy_marketplace(chain, owner, models=[(MODEL_REPO, model_file, digest)],
                                                  dispute_window=dispute_window, progress=advance)
        market = Marketplace(chain, deployment)
        await mint(chain, owner, market.stake_token, host.address, 1000 * 10**18)
        with tempfile.TemporaryDirectory(prefix="fabstir-demo-") as scratch:
            billing = BillingService(HostChain(market, host, model), Path(scratch) / "ledger.db",
                                     retry_delay=0.25)
            async with serve_node(config, billing=billing, progress=_progress) as server:
                runtime = server.runtime
                metadata = build_host_metadata("demo host", models=[model_file], publicKey=runtime.e2e_public_key,
                                               ed25519PublicKey=runtime.signing_public_key)
                await register_host(market, host, metadata=metadata, api_url=server.url, models=[model],
                                    min_price_native=HOST_PRICE_WEI, min_price_stable=10_000)
                _progress(f"host {host.address} staked 1000 FAB and registered {server.url}")
                sdk = FabstirSDK(chain=chain, deployment=deployment, account=client, default_options=options)
                summary = await _paid_session(sdk, market, billing, model, prompts, server.runtime.inference.model_id,
                                              host.address, client.address)
    finally:
        chain.close()
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    return summary


async def _paid_session(sdk: FabstirSDK, market: Marketplace, billing: BillingService, model: bytes,
                        prompts: tuple[str, ...], model_name: str, host: str, client: str) -> dict[str, Any]:
    chain = market.chain
    balances_before = {"client": await chain.balance(client), "host": await chain.balance(host)}
    opened = await sdk.sessions.open_session(model, DEPOSIT_WEI, strategy="cheapest", max_duration=3600,
                                             proof_interval=PROOF_INTERVAL)
    chosen, job = opened.host, opened.job
    found = sdk.discovery.get_discovery_stats()["hosts"]
    _progress(f"discovered {found} host(s) ({', '.join(sorted(chosen.sources))}); strategy 'cheapest' chose "
              f"{chosen.address} at {chosen.api_url}")
    _progress(f"opened session job {job.job_id} with a deposit of {format_units(job.deposit, 18, 'ETH')}")
    _progress("end-to-end encrypted with the host's published key; receipts checked against its Ed25519 key"
              if chosen.encryption_key else "the host publishes no encryption key: plaintext session")
    results = await _chat(sdk, str(job.job_id), job.job_id, chosen.api_url, prompts,
                          host_public_key=chosen.encryption_key, host_signing_key=chosen.signing_key)
    _progress("closed the session; the host checkpoints and settles after the dispute window")
    await _wait_settled(billing, job.job_id)
    final = await sdk.sessions.get_session(job.job_id)
    fee_bps = market.deployment.fee_basis_points
    split = final.settlement(fee_bps)
    owed = await earnings(market, host)
    summary = summarize(chosen.api_url, model_name, results, 0.0)
    served = sum(r.tokens_used for r in results)  # what was streamed (a stop sequence generated, never shown, is not)
    rules = await sdk.sessions.claim_rules()
    minimum = rules.session_minimum(final.proof_interval)
    countersigned = (await usage_record(market, job.job_id)).acknowledged if rules.countersigned else None
    summary.update({
        "encrypted": chosen.encryption_key is not None,
        "receipts_verified": sum(1 for r in results if r.receipt is not None),
        "job_id": job.job_id,
        "deposit": final.deposit,
        "price_per_token": final.price_per_token,
        "tokens_served": served,
        "tokens_billed": final.tokens_used,
        "billing_rules": "exact" if rules.exact else "public",
        "tokens_countersigned": countersigned,
        "minimum_charge_tokens": minimum,
        "billing_note": billing_note(served, final.tokens_used, minimum),
        "sdk_session_cost": sdk.billing.get_session_cost(job.job_id),
        "host_earnings": split.host_earnings,
        "treasury_fee": split.treasury_fee,
        "refund": split.refund,
        "host_earnings_on_chain": owed.native,
        "client_balance_before": balances_before["client"],
        "client_balance_after": await chain.balance(client),
        "host_balance_before": balances_before["host"],
        "host_balance_after": await chain.balance(host),
    })
    await sdk.aclose()
    return summary


def billing_note(served: int, billed: int, minimum_charge: int) -> str | None:
    """Why the chain billed other than what was served (``None`` when equal)."""
    if billed > served:
        return (f"minimum charge of {minimum_charge} tokens per session: {billed - served} more than served, "
                "as the first checkpoint claims the session's proof interval")
    if billed < served:
        return (f"{served - billed} tokens not billed: the last answers' tail is under the public marketplace's "
                f"{MIN_PROVEN_TOKENS}-token smallest claim")
    return None


async def _wait_settled(billing: BillingService, job_id: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while job_id not in billing.settled:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the host did not settle job {job_id} within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _chat(sdk: FabstirSDK, session_id: str, job_id: int | None, host_url: str, prompts: tuple[str, ...],
                *, host_public_key: str | None = None, host_signing_key: str | None = None) -> list[InferenceResult]:
    results = []
    await sdk.inference.connect_to_session(session_id, host_url, job_id=job_id, host_public_key=host_public_key,
                                           host_signing_key=host_signing_key)
    for prompt in prompts:
        print(f"\nuser> {prompt}\nassistant> ", end="", flush=True)
        result = await sdk.inference.send_prompt(prompt, on_token=_echo)
        print(f"\n  [{result.completion_tokens} tokens, {result.finish_reason}, "
              f"TTFT {result.ttft_ms or 0:.1f} ms, {result.tokens_per_s:.1f} tokens/s]", flush=True)
        results.append(result)
    await sdk.inference.close()
    return results


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _eth(wei: int) -> str:
    return format_units(wei, 18, "ETH")


def _echo(text: str) -> None:
    print(text, end="", flush=True)


def summarize(host: str, model: str, results: list[InferenceResult], wall_s: float) -> dict[str, Any]:
    """The demo's chat summary: totals over every turn (integers for token counts)."""
    completion = sum(r.completion_tokens for r in results)
    prompt_tokens = sum(r.usage.prompt_tokens for r in results if r.usage is not None)
    ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None]
    stream_s = sum(r.completion_tokens / r.tokens_per_s for r in results if r.tokens_per_s > 0)
    return {
        "host": host,
        "model": model,
        "turns": len(results),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "ttft_ms": round(sum(ttfts) / len(ttfts), 2) if ttfts else None,
        "tokens_per_s": round(completion / stream_s, 2) if stream_s > 0 else 0.0,
        "wall_s": round(wall_s, 2),
    }


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    keys = ("host", "model", "turns", "prompt_tokens", "completion_tokens", "ttft_ms", "tokens_per_s", "wall_s")
    print("\n")
    print_table(key_value_table([(key, str(summary[key])) for key in keys], title="summary"))
    if "deposit" in summary:
        print()
        print_table(key_value_table(_receipt_rows(summary), title=f"receipt (job {summary['job_id']})"))
    if as_json:
        print_json(summary)


def _receipt_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Where every unit of the deposit went, one labelled row each."""
    eth = _eth
    charged = summary["host_earnings"] + summary["treasury_fee"]
    rows = [
        ("deposit", eth(summary["deposit"])),
        ("price per token", f"{eth(summary['price_per_token'] // 1000)} ({summary['price_per_token']} x1000 base "
                            "units)"),
        ("tokens served", str(summary["tokens_served"])),
        ("tokens billed", f"{summary['tokens_billed']}"
                          + (f" ({summary['billing_note']})" if summary["billing_note"] else " (as served)")),
    ]
    if summary.get("tokens_countersigned") is not None:
        rows.append(("countersigned", f"{summary['tokens_countersigned']} (by the client, as it streamed)"))
    rows += [
        ("charged", f"{eth(charged)} (the SDK's get_session_cost said {eth(summary['sdk_session_cost'])})"),
        ("host earnings", eth(summary["host_earnings"])),
        ("treasury fee", eth(summary["treasury_fee"])),
        ("refund", eth(summary["refund"])),
        ("client balance", f"{eth(summary['client_balance_before'])} -> {eth(summary['client_balance_after'])} "
                           "(gas included)"),
        ("host balance", f"{eth(summary['host_balance_before'])} -> {eth(summary['host_balance_after'])} (gas paid; "
                         f"earnings {eth(summary['host_earnings_on_chain'])} to withdraw)"),
    ]
    return rows
