"""The node and the SDK speak what the public contracts speak, on a real EVM (eth-tester).

Checkpoints: the host signs them where the marketplace takes a signature (ours, and the public reference ABI)
and sends the older unsigned form where a deployment only has that one (a test contract, also behind an
ERC-1967 proxy as the public contracts are). Registry reads use only functions the public registry has, and
sessions open at the host's per-model price.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from fabstir.chain import jobs
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.deploy import DEFAULT_MIN_STAKE, deploy_marketplace
from fabstir.chain.metadata import build_host_metadata
from fabstir.chain.money import EXACT_RULES, PUBLIC_RULES
from fabstir.chain.proofs import ProofForm, detect_proof_form_sync, proof_digest, sign_proof
from fabstir.errors import ChainError, ContractError
from fabstir.node import billing
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import register_host
from fabstir.sdk.client import FabstirSDK

TEST_ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
REPO, FILE_A, FILE_B = "org/models", "a.gguf", "b.gguf"
NATIVE_PRICE, STABLE_PRICE = 2_000_000, 10_000


@dataclasses.dataclass
class World:
    chain: Chain
    market: Marketplace
    owner: LocalAccount
    host: LocalAccount
    client: LocalAccount

    @property
    def sdk(self) -> FabstirSDK:
        return FabstirSDK(chain=self.chain, deployment=self.market.deployment, account=self.client)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    chain = Chain.embedded(funded_accounts=4)
    owner, host, client = dev_account(0), dev_account(1), dev_account(2)
    try:
        deployment = await deploy_marketplace(chain, owner, models=[(REPO, FILE_A, b"\x0a" * 32),
                                                                    (REPO, FILE_B, b"\x0b" * 32)],
                                              max_tokens_per_second=1000)
        market = Marketplace(chain, deployment)
        await chain.transact(owner, market.stake_token.functions.mint(host.address, 10 * DEFAULT_MIN_STAKE))
        stake = await register_host(market, host, metadata=build_host_metadata("public-forms host", models=["a"]),
                                    api_url="http://127.0.0.1:9", models=[model_id(REPO, FILE_A),
                                                                          model_id(REPO, FILE_B)],
                                    min_price_native=NATIVE_PRICE, min_price_stable=STABLE_PRICE)
        assert stake == DEFAULT_MIN_STAKE  # read from MIN_STAKE(), as on the public registry
        yield World(chain, market, owner, host, client)
    finally:
        chain.close()


def _deploy_test_contract(chain: Chain, name: str, *args: Any) -> str:
    artifact = json.loads((TEST_ARTIFACTS / f"{name}.json").read_text(encoding="utf-8"))
    factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = chain.transact_sync(dev_account(0), factory.constructor(*args), label=f"deploy {name}")
    return str(receipt["contractAddress"])


def _sink_logs(chain: Chain, address: str, block: int) -> list[dict[str, Any]]:
    abi = json.loads((TEST_ARTIFACTS / "UnsignedProofSink.json").read_text(encoding="utf-8"))["abi"]
    sink = chain.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)
    return [dict(log["args"]) for log in sink.events.Submitted().get_logs(from_block=block)]


# --------------------------------------------------------------------------------------------- checkpoint forms


async def test_the_probe_finds_the_form_each_contract_speaks(world: World) -> None:
    chain, marketplace = world.chain, world.market.deployment.marketplace
    sink = _deploy_test_contract(chain, "UnsignedProofSink")
    behind_proxy = _deploy_test_contract(chain, "StubProxy", sink)
    ours_behind_proxy = _deploy_test_contract(chain, "StubProxy", marketplace)
    assert detect_proof_form_sync(chain.w3, marketplace) is ProofForm.SIGNED
    assert detect_proof_form_sync(chain.w3, sink) is ProofForm.UNSIGNED
    assert detect_proof_form_sync(chain.w3, behind_proxy) is ProofForm.UNSIGNED
    assert detect_proof_form_sync(chain.w3, ours_behind_proxy) is ProofForm.SIGNED
    assert ProofForm.SIGNED.selector.hex() == "3338f1e5" and ProofForm.UNSIGNED.selector.hex() == "7c5cb561"
    with pytest.raises(ChainError) as info:
        detect_proof_form_sync(chain.w3, world.client.address)
    assert info.value.code == "NO_CONTRACT"


async def test_exact_billing_is_detected_on_ours_only(world: World) -> None:
    """Ours (also behind a proxy) bill exactly what was served; a contract without ``marketplaceFeatures`` (the
    public ones) keeps the 100-token minimum claim and the minimum charge, and nothing calls it there."""
    chain, marketplace = world.chain, world.market.deployment.marketplace
    sink = _deploy_test_contract(chain, "StubProxy", _deploy_test_contract(chain, "UnsignedProofSink"))
    ours_behind_proxy = _deploy_test_contract(chain, "StubProxy", marketplace)
    for address, rules in ((marketplace, EXACT_RULES), (ours_behind_proxy, EXACT_RULES), (sink, PUBLIC_RULES)):
        market = Marketplace(chain, dataclasses.replace(world.market.deployment, marketplace=address))
        assert await jobs.claim_rules(market) == rules
        assert await HostChain(market, world.host, None).claim_rules() == rules
    assert EXACT_RULES.exact and EXACT_RULES.session_minimum(500) == 0
    assert not PUBLIC_RULES.exact and PUBLIC_RULES.session_minimum(500) == 500


async def test_the_host_sends_the_unsigned_form_where_the_contract_takes_no_signature(world: World) -> None:
    chain = world.chain
    proxy = _deploy_test_contract(chain, "StubProxy", _deploy_test_contract(chain, "UnsignedProofSink"))
    legacy = Marketplace(chain, dataclasses.replace(world.market.deployment, marketplace=proxy))
    host = HostChain(legacy, world.host, None)
    block = int(chain.w3.eth.block_number)
    await host.submit_checkpoint(7, 150, b"\x42" * 32, "cid-7")
    assert await host.proof_form() is ProofForm.UNSIGNED
    assert _sink_logs(chain, proxy, block) == [{"jobId": 7, "sender": world.host.address, "tokensClaimed": 150,
                                                "proofHash": b"\x42" * 32, "proofCID": "cid-7", "deltaCID": ""}]


async def test_the_host_signs_checkpoints_where_the_contract_verifies_them(world: World) -> None:
    sdk, market = world.sdk, world.market
    job = await sdk.sessions.create_session(world.host.address, f"{REPO}/{FILE_A}", 10**15)
    host = HostChain(market, world.host, model_id(REPO, FILE_A))
    assert await host.proof_form() is ProofForm.SIGNED
    await world.chain.advance_time(5)
    proof = host.proof_hash(job.job_id, 500)
    assert not await host.is_proof_recorded(proof)
    await host.submit_checkpoint(job.job_id, 500, proof, "cid-500")
    assert await host.is_proof_recorded(proof)  # verifiedProofs(bytes32), the public view
    assert (await sdk.sessions.get_session(job.job_id)).tokens_used == 500
    proved = [e for e in await sdk.sessions.get_session_events(job.job_id) if e.name == "ProofSubmitted"]
    assert proved[0].args["proofHash"] == proof and proved[0].args["tokensClaimed"] == 500

    # too early for the claim: the public contracts' rate-cap reason, which billing retries instead of parking
    with pytest.raises(ContractError) as info:
        await host.submit_checkpoint(job.job_id, 1_000_000, host.proof_hash(job.job_id, 1_000_500))
    assert info.value.reason == "Excessive tokens claimed"
    assert any(reason in info.value.reason for reason in billing._RETRYABLE)

    # a signature the contract must refuse: another key signs for this host
    stranger = dev_account(3)
    forged = sign_proof(stranger, b"\x01" * 32, 100)
    call = market.marketplace.functions.submitProofOfWork(job.job_id, 100, b"\x01" * 32, forged, "", "")
    await world.chain.advance_time(5)
    with pytest.raises(ContractError) as info:
        await world.chain.transact(world.host, call)
    assert info.value.reason == "Invalid proof signature"


def test_the_signed_digest_is_the_packed_proof_host_and_tokens() -> None:
    host = dev_account(1)
    packed = b"\x07" * 32 + bytes.fromhex(host.address[2:]) + (1234).to_bytes(32, "big")
    assert proof_digest(b"\x07" * 32, host.address, 1234) == Web3.keccak(packed)
    signature = sign_proof(host, b"\x07" * 32, 1234)
    assert len(signature) == 65 and signature[64] in (27, 28)


# --------------------------------------------------------------------------------------------- SDK reads


async def test_registry_reads_use_what_the_public_registry_has(world: World) -> None:
    registry = world.sdk.registry
    metadata = await registry.get_node_metadata(world.host.address)
    assert metadata.name == "public-forms host"
    assert await registry.get_node_stake(world.host.address) == DEFAULT_MIN_STAKE
    assert await registry.get_node_stake(world.client.address) == 0
    assert await registry.get_node_pricing(world.host.address) == NATIVE_PRICE


async def test_sessions_open_at_the_per_model_price(world: World) -> None:
    sdk, chain, nodes = world.sdk, world.chain, world.market.node_registry.functions
    model_a, model_b = model_id(REPO, FILE_A), model_id(REPO, FILE_B)
    start = int(chain.w3.eth.block_number) + 1
    await chain.transact(world.host, nodes.setModelPricing(model_a, 3 * NATIVE_PRICE, 0))
    assert await sdk.registry.get_model_pricing(world.host.address, model_a) == 3 * NATIVE_PRICE
    assert await sdk.registry.get_model_pricing(world.host.address, model_b) == NATIVE_PRICE
    assert await sdk.registry.get_model_pricing(world.host.address, None) == NATIVE_PRICE
    with pytest.raises(ContractError) as info:  # the default price is below this model's price
        await sdk.sessions.create_session(world.host.address, model_a, 10**15, NATIVE_PRICE)
    assert info.value.reason == "Price below host minimum for model"
    job = await sdk.sessions.create_session(world.host.address, model_a, 10**15)  # price: the model's
    assert job.price_per_token == 3 * NATIVE_PRICE
    events = [e for e in await sdk.registry.get_registry_events(from_block=start) if e.operator == world.host.address]
    assert [(e.name, e.args.get("nativePrice")) for e in events] == [("ModelPricingUpdated", 3 * NATIVE_PRICE)]


async def test_settlement_events_are_seen(world: World) -> None:
    sdk = world.sdk
    job = await sdk.sessions.create_session(world.host.address, model_id(REPO, FILE_A), 10**15)
    host = HostChain(world.market, world.host, None)
    await world.chain.advance_time(5)
    await host.submit_checkpoint(job.job_id, 1000, host.proof_hash(job.job_id, 1000))
    await sdk.sessions.complete_session(job.job_id)
    events = await sdk.sessions.get_session_events(job.job_id)
    assert [e.name for e in events] == ["SessionJobCreated", "ProofSubmitted", "SessionCompleted"]
    gross = 1000 * NATIVE_PRICE // 1000
    assert events[2].args == {"jobId": job.job_id, "totalTokensUsed": 1000, "hostEarnings": gross * 9 // 10,
                              "userRefund": 10**15 - gross}


async def test_timeouts_are_seen(world: World) -> None:
    sdk = world.sdk
    job = await sdk.sessions.create_session(world.host.address, None, 10**15, max_duration=60)
    await world.chain.advance_time(61)
    await sdk.sessions.trigger_timeout(job.job_id)
    [timed_out] = [e for e in await sdk.sessions.get_session_events(job.job_id) if e.name == "SessionTimedOut"]
    assert timed_out.args == {"jobId": job.job_id, "hostEarnings": 0, "userRefund": 10**15}
