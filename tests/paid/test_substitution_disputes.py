"""Substitution disputes on chain (issue 14 P2): a host caught serving another model than its job names, by the
activation-fingerprint check, is reported by the marketplace's validator; the job closes unpaid, the depositor
gets the whole deposit back and the host's stake is slashed to the depositor. Real nodes on 127.0.0.1 with the
suite's tiny model (the cheat serves a random-weight GGUF under the same name), the embedded EVM."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from fabstir.chain import jobs, registry, substitution
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.network import NetworkConfig
from fabstir.chain.proofs import FEATURE_SUBSTITUTION_DISPUTES
from fabstir.chain.records import JobStatus
from fabstir.cli.main import main
from fabstir.cli.verify import CAUGHT
from fabstir.errors import ConfigError, ContractError
from fabstir.fingerprints import Verdict, Verifier
from fabstir.node.billing import BillingService
from fabstir.node.engines.templates import get_template
from fabstir.node.host_chain import HostChain
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.sdk.disputes import evidence_hash, report_substitution, substitution_evidence
from fabstir.sdk.verification import answer_record, save_record, verify_record
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, add_host, build_world, register, until

DEPOSIT = 10**15
QUESTION = "Once upon a time"
OPTIONS = PromptOptions(max_tokens=40, temperature=0.8)


@pytest.fixture
async def world(tiny_model: Path) -> AsyncIterator[PaidWorld]:
    """A marketplace whose hosts cannot settle on their own (long window; the nodes never complete)."""
    chain = Chain.embedded(funded_accounts=6)
    try:
        yield await build_world(chain, tiny_model.name, dispute_window=600)
    finally:
        chain.close()


@pytest.fixture
async def validator(world: PaidWorld) -> LocalAccount:
    account = dev_account(4)
    await substitution.set_substitution_validator(world.market, world.owner, account.address)
    return account


@pytest.fixture
def random_weights(tmp_path: Path) -> Path:
    """Another model under the named model's file name (what a substituting host would serve)."""
    (tmp_path / "random").mkdir()
    return write_tiny_gguf(tmp_path / "random" / "tiny.gguf", seed=1, context_length=512)


def rendered(question: str) -> str:
    return get_template("plain").render([ChatTurn("user", question)])


async def billed_node(world: PaidWorld, node_factory: NodeFactory, host: LocalAccount, ledger: Path,
                      **settings: Any) -> NodeServer:
    billing = BillingService(HostChain(world.market, host, world.model), ledger, checkpoint_tokens=20, min_tokens=1,
                             retry_delay=0.2, defer_while_streaming=False, complete_sessions=False)
    node: NodeServer = await node_factory(billing=billing, parallel=1, **settings)
    return node


async def answered_job(world: PaidWorld, node: NodeServer, host: LocalAccount) -> tuple[int, dict[str, Any]]:
    """Open a job on ``host``, ask one question on ``node``, wait for the host's claim; the job and the record."""
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=OPTIONS) as sdk:
        job = await sdk.sessions.create_session(host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        result = await sdk.inference.send_prompt(QUESTION)

    async def claimed() -> bool:
        return (await jobs.get_session_job(world.market, job.job_id)).tokens_used > 0

    await until(claimed)
    return job.job_id, answer_record(rendered(QUESTION), result)


async def fab(world: PaidWorld, address: str) -> int:
    return int(await world.chain.call(world.market.stake_token.functions.balanceOf(address)))


async def stable_balance(world: PaidWorld, address: str) -> int:
    return int(await world.chain.call(world.market.stable_token.functions.balanceOf(address)))


async def stake(world: PaidWorld, host: str) -> int:
    return int((await world.chain.call(world.market.node_registry.functions.nodes(host)))[1])


async def refused(reason: str, call: Awaitable[Any]) -> None:
    with pytest.raises(ContractError) as info:
        await call
    assert info.value.reason == reason


async def test_a_substituting_host_is_caught_refunded_and_slashed(world: PaidWorld, validator: LocalAccount,
                                                                  node_factory: NodeFactory, tiny_model: Path,
                                                                  random_weights: Path, tmp_path: Path) -> None:
    """The host serves random weights under the named model; it claims tokens; the validator's check catches it
    and its report closes the job unpaid: the depositor gets the deposit back and half of MIN_STAKE of the host's
    stake, to the wei. A stranger's report and a second report are refused."""
    node = await billed_node(world, node_factory, world.host, tmp_path / "l.db", model_path=str(random_weights))
    await register(world, node.url)
    job_id, record = await answered_job(world, node, world.host)
    claimed = (await jobs.get_session_job(world.market, job_id)).tokens_used
    with Verifier(tiny_model, threads=1) as verifier:
        verdict = verify_record(verifier, record)
    assert not verdict.honest, verdict.to_json()

    market, client, host = world.market, world.client.address, world.host.address
    slash = await substitution.slash_amount(market)
    assert slash == 500 * 10**18  # half the deployment's MIN_STAKE of 1000 FAB
    before = (await world.chain.balance(client), await world.chain.balance(market.deployment.marketplace),
              await world.chain.balance(market.deployment.host_earnings), await fab(world, client),
              await fab(world, market.deployment.node_registry), await stake(world, host))
    await refused("Only validator", substitution.report_substitution(market, world.stranger, job_id, b"\x01" * 32))

    async with FabstirSDK(chain=world.chain, deployment=market.deployment, account=validator) as sdk:
        report = await report_substitution(sdk, job_id, record, verdict, evidence_uri="ipfs://evidence")
    after = (await world.chain.balance(client), await world.chain.balance(market.deployment.marketplace),
             await world.chain.balance(market.deployment.host_earnings), await fab(world, client),
             await fab(world, market.deployment.node_registry), await stake(world, host))
    assert after == (before[0] + DEPOSIT, before[1] - DEPOSIT, before[2], before[3] + slash, before[4] - slash,
                     before[5] - slash)
    expected = evidence_hash(substitution_evidence(world.chain.chain_id, market.deployment.marketplace, job_id,
                                                   record, verdict))
    assert (report.job_id, report.host, report.validator, report.evidence_hash, report.evidence_uri,
            report.slashed) == (job_id, host, validator.address, expected, "ipfs://evidence", slash)
    gas = world.chain.w3.eth.get_transaction_receipt(report.tx_hash)["gasUsed"]  # type: ignore[arg-type]
    print(f"\nreportSubstitution: {gas} gas (ETH job, {claimed} tokens claimed, refund pushed, stake slashed)")
    final = await jobs.get_session_job(market, job_id)
    assert claimed > 0 and final.status is JobStatus.COMPLETED and final.tokens_used == 0
    assert await substitution.substitution_evidence(market, job_id) == expected
    assert await substitution.substitution_reports(market, job_id) == [report]

    await refused("Already reported", substitution.report_substitution(market, validator, job_id, expected))
    async with FabstirSDK(chain=world.chain, deployment=market.deployment, account=validator) as sdk:
        await refused("Already reported", report_substitution(sdk, job_id, record, verdict))
    assert await substitution.substitution_reports(market) == [report]


async def test_the_cli_reports_the_caught_host_and_never_the_honest_one(
        world: PaidWorld, node_factory: NodeFactory, tiny_model: Path,
        random_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``fabstir dispute validator`` appoints the validator (the owner's key); ``fabstir dispute substitution``:
    the honest host's answer verifies, nothing is sent (the validator's nonce does not move) and the job stays
    active; the cheat's is reported (exit 3), with the published evidence file hashing to what the chain
    records."""
    validator = dev_account(4)
    honest_node = await billed_node(world, node_factory, world.host, tmp_path / "honest.db")
    await register(world, honest_node.url)
    cheat = dev_account(5)
    cheat_node = await billed_node(world, node_factory, cheat, tmp_path / "cheat.db", model_path=str(random_weights))
    await add_host(world, cheat, cheat_node.url, HOST_PRICE_NATIVE)
    honest_job, honest_record = await answered_job(world, honest_node, world.host)
    cheat_job, cheat_record = await answered_job(world, cheat_node, cheat)
    save_record(tmp_path / "honest.json", honest_record["prompt"], _result(honest_record))
    (tmp_path / "cheat.json").write_text(json.dumps(cheat_record), encoding="utf-8")
    network = tmp_path / "network.json"
    NetworkConfig("test", "http://127.0.0.1:9", world.market.deployment,
                  accounts={"validator": validator.key.hex(), "owner": world.owner.key.hex()}).save(network)

    def cli(job: int, record: Path, *extra: str) -> int:
        return main(["dispute", "substitution", str(job), "--record", str(record), "--model", str(tiny_model),
                     "--network", str(network), "--account", "validator", "--threads", "1", "--json", *extra])

    with monkeypatch.context() as patch:  # the CLI's network file points at this in-process chain
        patch.setattr(NetworkConfig, "connect", lambda _self: world.chain)
        patch.setattr(world.chain, "close", lambda: None)
        appoint = ["dispute", "validator", validator.address, "--network", str(network), "--account", "owner",
                   "--json"]
        assert await asyncio.to_thread(main, appoint) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["validator"] == validator.address
        nonce = world.chain.w3.eth.get_transaction_count(validator.address)
        assert await asyncio.to_thread(cli, honest_job, tmp_path / "honest.json") == 0
        honest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (honest["honest"], honest["reported"]) == (True, False)
        assert world.chain.w3.eth.get_transaction_count(validator.address) == nonce
        assert (await jobs.get_session_job(world.market, honest_job)).status is JobStatus.ACTIVE

        evidence = tmp_path / "evidence.json"
        assert await asyncio.to_thread(cli, cheat_job, tmp_path / "cheat.json", "--evidence-out", str(evidence),
                                       "--evidence-uri", "https://example.invalid/e.json") == CAUGHT
    caught = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (caught["honest"], caught["reported"], caught["host"]) == (False, True, cheat.address)
    assert caught["refund"] == DEPOSIT  # the job was active: its deposit came back whole
    on_chain = await substitution.substitution_evidence(world.market, cheat_job)
    assert on_chain is not None and caught["evidence_hash"] == "0x" + on_chain.hex()
    assert evidence_hash(json.loads(evidence.read_text(encoding="utf-8"))) == on_chain
    reports = await substitution.substitution_reports(world.market)
    assert [(r.job_id, r.tx_hash, r.evidence_uri) for r in reports] == [
        (cheat_job, caught["tx_hash"], "https://example.invalid/e.json")]
    assert await substitution.substitution_evidence(world.market, honest_job) is None


def _result(record: dict[str, Any]) -> Any:
    """An InferenceResult carrying ``record``'s answer and receipt (to write it back with ``save_record``)."""
    from fabstir.protocol.signing import Receipt
    from fabstir.sdk.types import InferenceResult

    return InferenceResult(text=record["answer"], finish_reason="length", usage=None, tokens_used=0,
                           message_index=0, ttft_ms=None, tokens_per_s=0.0, session_id="", request_id="",
                           receipt=Receipt.from_wire(record["receipt"]))


async def test_reports_need_the_appointed_validator_evidence_and_a_recent_job(world: PaidWorld) -> None:
    """No validator appointed: refused. Only the owner appoints. A job with a zero evidence hash cannot be
    reported, nor one reported already; only the marketplace may slash; the SDK refuses an honest verdict, a
    record of another host, before anything is sent. The feature bit is advertised. A job its host settled
    before the report is reported within the report window (the host's stake is slashed, its settlement
    stays), not after. A host that unregistered before the report is slashed from its unbonding stake."""
    market = world.market
    assert await jobs.marketplace_features(market) & FEATURE_SUBSTITUTION_DISPUTES
    assert await substitution.substitution_validator(market) is None
    await register(world, "http://127.0.0.1:9")
    validator = dev_account(4)
    async with FabstirSDK(chain=world.chain, deployment=market.deployment, account=world.client) as sdk:
        job = (await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)).job_id
        settled = (await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT,
                                                     HOST_PRICE_NATIVE)).job_id
        await sdk.sessions.complete_session(settled)
    await refused("Only validator", substitution.report_substitution(market, validator, job, b"\x01" * 32))
    await refused("Only owner", substitution.set_substitution_validator(market, world.stranger, validator.address))
    await substitution.set_substitution_validator(market, world.owner, validator.address)
    assert await substitution.substitution_validator(market) == validator.address
    await refused("No evidence", substitution.report_substitution(market, validator, job, bytes(32)))
    await refused("Session not found", substitution.report_substitution(market, validator, 999, b"\x01" * 32))
    await refused("Not slashing authority", world.chain.transact(
        world.stranger, market.node_registry.functions.slash(world.host.address, 1, world.stranger.address)))
    authority = str(await world.chain.call(market.node_registry.functions.slashingAuthority()))
    assert authority.lower() == market.deployment.marketplace.lower()

    async with FabstirSDK(chain=world.chain, deployment=market.deployment, account=world.client) as sdk:
        stable_job = (await sdk.sessions.create_session(world.host.address, world.model, 10**6, 10_000,
                                                        token=market.deployment.stable_token)).job_id
    usdc = (await stable_balance(world, world.client.address), await stake(world, world.host.address))
    sent = await world.chain.transact(validator, market.marketplace.functions.reportSubstitution(
        stable_job, b"\x02" * 32, "ipfs://e"))
    assert (await stable_balance(world, world.client.address), await stake(world, world.host.address)) == (
        usdc[0] + 10**6, usdc[1] - 500 * 10**18)  # the ERC-20 deposit back in full, the stake slashed
    print(f"\nreportSubstitution: {sent['gasUsed']} gas (ERC-20 job, refund pushed, stake slashed)")

    receipt = {"host": world.stranger.address}
    caught = Verdict(False, "1 of 1 chunks differ from the named model (first: chunk 0)")
    async with FabstirSDK(chain=world.chain, deployment=market.deployment, account=validator) as sdk:
        with pytest.raises(ConfigError) as honest:
            await report_substitution(sdk, job, {"receipt": receipt}, Verdict(True, ""))
        assert honest.value.code == "DISPUTE_NOT_CAUGHT"
        with pytest.raises(ConfigError) as wrong_host:
            await report_substitution(sdk, job, {"receipt": receipt}, caught)
        assert wrong_host.value.code == "DISPUTE_WRONG_HOST"
    assert (await jobs.get_session_job(market, job)).status is JobStatus.ACTIVE
    assert [r.job_id for r in await substitution.substitution_reports(market)] == [stable_job]

    # a job settled before the report: within the window the host is slashed, the settlement stays
    half = 500 * 10**18
    assert await substitution.substitution_report_window(market) == 86_400
    client_fab, client_eth = await fab(world, world.client.address), await world.chain.balance(world.client.address)
    after_settling = await substitution.report_substitution(market, validator, settled, b"\x01" * 32)
    assert after_settling.slashed == half and await fab(world, world.client.address) == client_fab + half
    assert after_settling.refund == 0
    assert await world.chain.balance(world.client.address) == client_eth
    assert (await jobs.get_session_job(market, settled)).status is JobStatus.COMPLETED
    await refused("Already reported", substitution.report_substitution(market, validator, settled, b"\x04" * 32))
    await refused("Already reported", substitution.report_substitution(market, validator, stable_job, b"\x04" * 32))
    async with FabstirSDK(chain=world.chain, deployment=market.deployment, account=world.client) as sdk:
        old = (await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)).job_id
        await sdk.sessions.complete_session(old)
    await world.chain.advance_time(86_400 + 1)
    await refused("Report window over", substitution.report_substitution(market, validator, old, b"\x05" * 32))
    await refused("Only owner", substitution.set_substitution_report_window(market, world.stranger, 7 * 86_400))
    await substitution.set_substitution_report_window(market, world.owner, 7 * 86_400)
    with_longer_window = await substitution.report_substitution(market, validator, old, b"\x05" * 32)
    assert with_longer_window.slashed == 0  # the host's stake is all gone by now (two halves)

    # a host that unregisters before the report: its unbonding stake is still slashed
    await world.chain.transact(world.owner, market.stake_token.functions.mint(world.host.address, half))
    await world.chain.transact(world.host, market.stake_token.functions.approve(market.node_registry.address, half))
    await world.chain.transact(world.host, market.node_registry.functions.stake(half))
    left = await registry.unregister_node(market, world.host)
    assert left.stake == half and left.unbonding_until is not None
    before = await world.chain.balance(world.client.address)
    late = await substitution.report_substitution(market, validator, job, b"\x03" * 32)
    assert late.slashed == half and await world.chain.balance(world.client.address) == before + DEPOSIT
    assert late.refund == DEPOSIT
    assert (await registry.unbonding_stake(market, world.host.address)).amount == 0
    await refused("Nothing unbonding", registry.withdraw_unbonded_stake(market, world.host))
