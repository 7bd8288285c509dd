"""A small in-process chain harness for the contract tests: deploy from the committed artifacts, transact,
expect reverts, travel in time, read events.

This is test support only; the production deploy code lives in ``fabstir.chain``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_tester import EthereumTester
from eth_tester.exceptions import TransactionFailed
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT_DIRS = (ROOT / "src" / "fabstir" / "chain" / "artifacts", Path(__file__).resolve().parent / "artifacts")

ETH = 10**18
FAB = 10**18
USDC = 10**6
ZERO_ADDRESS = "0x" + "00" * 20
TX_GAS = 8_000_000

MIN_STAKE = 1000 * FAB
FEE_BPS = 1000
DISPUTE_WINDOW = 30
INACTIVITY_TIMEOUT = 300
MAX_TOKENS_PER_SECOND = 1000
USDC_MIN_DEPOSIT = 500_000
USDC_MAX_DEPOSIT = 10**12

NATIVE_MIN_PRICE = 3_000_000  # the host's minimum, wei per token x 1000
STABLE_MIN_PRICE = 10_000  # the host's minimum, USDC units per token x 1000 ($10 per million tokens)

MODEL_A = ("CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf")
MODEL_B = ("TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "tinyllama-1b.Q4_K_M.gguf")


@cache
def artifact(name: str) -> dict[str, Any]:
    """The committed artifact of contract ``name`` (production first, then the test mocks)."""
    for directory in ARTIFACT_DIRS:
        path = directory / f"{name}.json"
        if path.is_file():
            loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return loaded
    raise FileNotFoundError(f"no artifact for {name}")


def model_id(repo: str, file_name: str) -> bytes:
    return bytes(Web3.keccak(text=f"{repo}/{file_name}"))


def proof_hash(label: str) -> bytes:
    return bytes(Web3.keccak(text=f"proof:{label}"))


def proof_signature(private_key: bytes, proof_hash: bytes, host: str, tokens: int) -> bytes:
    """The host's checkpoint signature: eth_sign of keccak256(abi.encodePacked(proofHash, host, tokensClaimed))."""
    digest = Web3.keccak(proof_hash + bytes.fromhex(host[2:]) + tokens.to_bytes(32, "big"))
    return bytes(Account.sign_message(encode_defunct(primitive=digest), private_key=private_key).signature)


def settle(tokens: int, price: int, fee_bps: int, deposit: int) -> tuple[int, int, int]:
    """Pure-Python mirror of the marketplace's settlement: (host net, treasury fee, refund)."""
    payment = tokens * price // 1000
    fee = payment * fee_bps // 10_000
    return payment - fee, fee, deposit - payment


class Chain:
    """One eth-tester (py-evm) chain with helpers to deploy, transact and travel in time."""

    def __init__(self) -> None:
        self.provider = EthereumTesterProvider()
        self.w3 = Web3(self.provider)
        tester = self.provider.ethereum_tester
        assert tester is not None
        self.tester: EthereumTester = tester
        self.accounts: list[str] = list(self.w3.eth.accounts)
        backend: Any = tester.backend
        self.keys: dict[str, bytes] = {key.public_key.to_checksum_address(): key.to_bytes()
                                       for key in backend.account_keys}

    def deploy(self, name: str, *args: Any, sender: str | None = None) -> Contract:
        built = artifact(name)
        factory = self.w3.eth.contract(abi=built["abi"], bytecode=built["bytecode"])
        receipt = self.send(factory.constructor(*args), sender or self.accounts[0])
        return self.at(name, receipt["contractAddress"])

    def at(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact(name)["abi"])

    def send(self, call: Any, sender: str, value: int = 0) -> Any:
        """Transact and return the receipt, which must be a success.

        A fixed gas limit skips eth-tester's gas estimation (a binary search that doubles the cost of every
        transaction); a transaction that fails is replayed with estimation to raise its revert reason.
        """
        tx_hash = call.transact({"from": sender, "value": value, "gas": TX_GAS})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            call.estimate_gas({"from": sender, "value": value})  # raises with the reason (state is unchanged)
            raise AssertionError(f"transaction failed without a revert reason: {receipt}")
        return receipt

    @contextlib.contextmanager
    def reverts(self, reason: str) -> Iterator[None]:
        """Expect the transaction inside to revert with exactly ``reason``."""
        with pytest.raises((TransactionFailed, ContractLogicError)) as info:
            yield
        message = str(info.value.args[0]) if info.value.args else str(info.value)
        assert message in (f"execution reverted: {reason}", reason), message

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def travel(self, seconds: int) -> int:
        """Mine an empty block ``seconds`` after the latest one; return its timestamp."""
        target = self.now() + seconds
        self.tester.time_travel(target)
        self.tester.mine_blocks(1)
        return target

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def gas_cost(self, receipt: Any) -> int:
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    @staticmethod
    def events(contract: Contract, name: str, receipt: Any) -> list[dict[str, Any]]:
        """The decoded arguments of every ``name`` event ``contract`` emitted in ``receipt``."""
        logs = getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD)
        return [dict(log["args"]) for log in logs]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the block, then put the chain back as it was."""
        snapshot_id = self.tester.take_snapshot()
        try:
            yield
        finally:
            self.tester.revert_to_snapshot(snapshot_id)


@dataclasses.dataclass
class Market:
    """The deployed and wired marketplace plus named accounts. ``host`` is registered for both models."""

    chain: Chain
    fab: Contract
    usdc: Contract
    models: Contract
    nodes: Contract
    earnings: Contract
    proofs: Contract
    market: Contract
    owner: str
    host: str
    host2: str
    user: str
    user2: str
    stranger: str
    model_a: bytes
    model_b: bytes

    @property
    def treasury(self) -> str:
        return str(self.market.functions.treasuryAddress().call())

    def register(self, host: str, models: list[bytes] | None = None, native: int = NATIVE_MIN_PRICE,
                 stable: int = STABLE_MIN_PRICE, api_url: str = "http://127.0.0.1:8080") -> Any:
        """Approve the stake and register ``host``; return the receipt."""
        self.chain.send(self.fab.functions.approve(self.nodes.address, MIN_STAKE), host)
        metadata = json.dumps({"name": f"host-{host[-4:]}"})
        call = self.nodes.functions.registerNode(metadata, api_url, models or [self.model_a], native, stable)
        return self.chain.send(call, host)

    def open_eth(self, deposit: int = 10**15, price: int = NATIVE_MIN_PRICE, *, host: str | None = None,
                 user: str | None = None, model: bytes | None = None, max_duration: int = 3600,
                 proof_interval: int = 1000) -> tuple[int, Any]:
        """Open an ETH session; return (job id, receipt)."""
        host, user = host or self.host, user or self.user
        if model is None:
            call = self.market.functions.createSessionJob(host, price, max_duration, proof_interval)
        else:
            call = self.market.functions.createSessionJobForModel(host, model, price, max_duration, proof_interval)
        receipt = self.chain.send(call, user, value=deposit)
        return self.chain.events(self.market, "SessionJobCreated", receipt)[0]["jobId"], receipt

    def open_usdc(self, deposit: int = 2 * USDC, price: int = STABLE_MIN_PRICE, *, host: str | None = None,
                  user: str | None = None, model: bytes | None = None, max_duration: int = 3600,
                  proof_interval: int = 100) -> tuple[int, Any]:
        """Approve and open a USDC session; return (job id, receipt)."""
        host, user = host or self.host, user or self.user
        self.chain.send(self.usdc.functions.approve(self.market.address, deposit), user)
        functions = self.market.functions
        if model is None:
            call = functions.createSessionJobWithToken(host, self.usdc.address, deposit, price, max_duration,
                                                       proof_interval)
        else:
            call = functions.createSessionJobForModelWithToken(host, model, self.usdc.address, deposit, price,
                                                               max_duration, proof_interval)
        receipt = self.chain.send(call, user)
        return self.chain.events(self.market, "SessionJobCreated", receipt)[0]["jobId"], receipt

    def prove(self, job_id: int, tokens: int, label: str, *, host: str | None = None, wait: int = 10) -> Any:
        """Wait ``wait`` seconds, then submit a checkpoint for ``tokens`` signed by its sender; return the receipt."""
        if wait:
            self.chain.travel(wait)
        sender = host or self.host
        return self.chain.send(self.checkpoint(job_id, tokens, label, signer=sender), sender)

    def checkpoint(self, job_id: int, tokens: int, label: str, *, signer: str | None = None,
                   signature: bytes | None = None) -> Any:
        """The submitProofOfWork call for a checkpoint named ``label``, signed by ``signer`` (default: ``host``)
        unless ``signature`` is given."""
        digest = proof_hash(label)
        if signature is None:
            account = signer or self.host
            signature = proof_signature(self.chain.keys[account], digest, account, tokens)
        return self.market.functions.submitProofOfWork(job_id, tokens, digest, signature, f"cid-{label}",
                                                       f"delta-{label}")

    def session(self, job_id: int) -> list[Any]:
        return list(self.market.functions.sessionJobs(job_id).call())


def deploy_market(chain: Chain, *, fee_bps: int = FEE_BPS, dispute_window: int = DISPUTE_WINDOW,
                  inactivity_timeout: int = INACTIVITY_TIMEOUT,
                  max_tokens_per_second: int = MAX_TOKENS_PER_SECOND) -> Market:
    """Deploy and wire all contracts, approve two models, accept USDC, fund the accounts, register ``host``."""
    owner, host, host2, user, user2, stranger = chain.accounts[:6]
    fab = chain.deploy("FabstirToken", "Fabstir Token", "FAB", 18)
    usdc = chain.deploy("FabstirToken", "Local USD Coin", "USDC", 6)
    models = chain.deploy("ModelRegistry")
    nodes = chain.deploy("NodeRegistry", fab.address, models.address, MIN_STAKE)
    earnings = chain.deploy("HostEarnings")
    proofs = chain.deploy("ProofSystem")
    market = chain.deploy("JobMarketplace", nodes.address, earnings.address, proofs.address, fee_bps,
                          dispute_window, inactivity_timeout, max_tokens_per_second)
    chain.send(earnings.functions.setAuthorizedCaller(market.address, True), owner)
    chain.send(proofs.functions.setAuthorizedCaller(market.address, True), owner)
    chain.send(market.functions.addAcceptedToken(usdc.address, USDC_MIN_DEPOSIT, USDC_MAX_DEPOSIT), owner)
    for repo, file_name in (MODEL_A, MODEL_B):
        digest = bytes(Web3.keccak(text=file_name))  # stands in for the file's SHA-256
        chain.send(models.functions.addTrustedModel(repo, file_name, digest), owner)
    for account in chain.accounts[1:8]:
        chain.send(fab.functions.mint(account, 10 * MIN_STAKE), owner)
        chain.send(usdc.functions.mint(account, 1_000_000 * USDC), owner)
    result = Market(chain=chain, fab=fab, usdc=usdc, models=models, nodes=nodes, earnings=earnings, proofs=proofs,
                    market=market, owner=owner, host=host, host2=host2, user=user, user2=user2, stranger=stranger,
                    model_a=model_id(*MODEL_A), model_b=model_id(*MODEL_B))
    result.register(host, [result.model_a, result.model_b])
    return result
