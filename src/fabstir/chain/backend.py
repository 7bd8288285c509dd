"""A connection to an EVM chain: in-process (eth-tester / py-evm) or any JSON-RPC URL.

Theory of operation: web3.py's synchronous API does the work, always on one
dedicated worker thread per :class:`Chain`, and :meth:`Chain.run` awaits it.
So chain calls never run on the event loop (a 30 ms embedded transaction
cannot delay a streamed token), and transactions from one process are
serialised, which keeps nonces simple. Transactions are signed locally with
the sender's key on every backend, so the same code drives eth-tester, anvil
and a public chain. Third-party errors become :class:`ContractError` or
:class:`ChainConnectionError` here.
"""

from __future__ import annotations

import asyncio
import functools
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed  # the embedded chain's own revert error
from web3 import EthereumTesterProvider, Web3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, Web3RPCError
from web3.types import Wei

from fabstir.errors import ChainConnectionError, ChainError, ContractError

_REVERTS = (ContractLogicError, ContractCustomError, ContractPanicError, Web3RPCError, TransactionFailed, ValueError)

__all__ = ["Chain", "DEV_MNEMONIC", "dev_account", "dev_accounts"]

T = TypeVar("T")

DEV_MNEMONIC = "test test test test test test test test test test test junk"
"""The well-known development mnemonic (anvil's and Hardhat's default accounts). Never use it for real funds."""

EMBEDDED_FUNDING = 10_000 * 10**18
EMBEDDED_GAS_LIMIT = 3_000_000


@functools.cache
def dev_account(index: int) -> LocalAccount:
    """Development account ``index`` of :data:`DEV_MNEMONIC` (same addresses as anvil's defaults)."""
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def dev_accounts(count: int = 10) -> list[LocalAccount]:
    return [dev_account(i) for i in range(count)]


class Chain:
    """One chain connection; see the module docstring."""

    def __init__(self, w3: Web3, *, kind: str, tester: Any = None) -> None:
        self.w3 = w3
        self.kind = kind
        self._tester = tester
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fabstir-chain")
        self.chain_id: int = self._call_sync(lambda: int(w3.eth.chain_id))

    @classmethod
    def embedded(cls, funded_accounts: int = 10) -> Chain:
        """A fresh in-process EVM with the first ``funded_accounts`` development accounts funded."""
        with warnings.catch_warnings():  # eth-tester turns every warning on, process-wide, as it picks a backend
            provider = EthereumTesterProvider()
        w3 = Web3(provider)
        tester = provider.ethereum_tester
        funder = w3.eth.accounts[0]
        for account in dev_accounts(funded_accounts):
            w3.eth.send_transaction({"from": funder, "to": account.address, "value": Wei(EMBEDDED_FUNDING)})
        return cls(w3, kind="embedded", tester=tester)

    @classmethod
    def connect(cls, rpc_url: str, *, timeout: float = 10.0) -> Chain:
        """Connect to a JSON-RPC endpoint (anvil, a testnet, mainnet).

        Raises:
            ChainConnectionError: nothing answers at ``rpc_url``.
        """
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        try:
            return cls(w3, kind="rpc")
        except Exception as exc:  # requests/urllib3/web3 errors: all mean "unreachable" here
            raise ChainConnectionError(f"cannot reach the chain at {rpc_url}: {type(exc).__name__}") from None

    # --- running work on the chain thread -----------------------------------

    def _call_sync(self, fn: Callable[[], T]) -> T:
        return self._executor.submit(fn).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the chain thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # --- transactions --------------------------------------------------------

    def transact_sync(self, sender: LocalAccount, call: Any, *, value: int = 0, label: str = "") -> Any:
        """Sign and send ``call`` (a bound contract function) from ``sender``; wait for the receipt.

        Raises:
            ContractError: the call reverts (checked by gas estimation before sending) or the
                mined transaction failed.
        """
        name = label or getattr(call, "fn_name", "transaction")
        try:
            params: dict[str, Any] = {"from": sender.address, "value": value}
            if self._tester is None:
                # estimated on the pending block: a chain that mines only on demand (anvil) keeps an old
                # timestamp on "latest", where time checks (the checkpoint rate limit) would fail forever
                # with a margin: the state it is mined on may cost more than the one it was estimated on, and a
                # transaction that runs out of gas fails on chain without a revert reason
                params["gas"] = call.estimate_gas(dict(params), block_identifier="pending") * 5 // 4 + 20_000
            elif hasattr(call, "call"):
                # eth-tester's gas estimation runs the transaction a dozen times in Python, holding the GIL
                # that the streaming event loop needs: run it once as a call (which surfaces the revert
                # reason) and send it with a fixed limit (unused gas is refunded)
                call.call(dict(params), block_identifier="pending")
                params["gas"] = EMBEDDED_GAS_LIMIT
            tx = call.build_transaction({
                **params,
                "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
                "chainId": self.chain_id,
            })
            signed = sender.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        except _REVERTS as exc:
            raise _contract_error(name, exc) from None
        if receipt["status"] != 1:
            raise ContractError(f"{name} failed on chain (tx {tx_hash.hex()})", function=name)
        return receipt

    async def transact(self, sender: LocalAccount, call: Any, *, value: int = 0, label: str = "") -> Any:
        """:meth:`transact_sync` on the chain thread."""
        return await self.run(functools.partial(self.transact_sync, sender, call, value=value, label=label))

    def call_sync(self, call: Any, label: str = "") -> Any:
        """Read-only call of a bound contract function."""
        try:
            return call.call()
        except _REVERTS as exc:
            raise _contract_error(label or getattr(call, "fn_name", "call"), exc) from None

    async def call(self, call: Any, label: str = "") -> Any:
        return await self.run(self.call_sync, call, label)

    async def send_eth(self, sender: LocalAccount, to: str, value: int) -> Any:
        def send() -> Any:
            tx: dict[str, Any] = {"from": sender.address, "to": to, "value": value, "chainId": self.chain_id,
                  "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"), "gas": 21_000,
                  "maxFeePerGas": self.w3.eth.gas_price * 2, "maxPriorityFeePerGas": 0}
            signed = sender.sign_transaction(tx)
            return self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(signed.raw_transaction))

        return await self.run(send)

    async def balance(self, address: str) -> int:
        return await self.run(lambda: int(self.w3.eth.get_balance(Web3.to_checksum_address(address))))

    # --- time ------------------------------------------------------------------

    async def timestamp(self) -> int:
        """Chain time in seconds: the latest block's timestamp.

        The embedded chain only mines when a transaction arrives, so an empty block is mined
        first to bring its clock up to date.
        """
        def read() -> int:
            if self._tester is not None:
                self._tester.mine_blocks(1)
            return int(self.w3.eth.get_block("latest")["timestamp"])

        return await self.run(read)

    async def advance_time(self, seconds: int) -> None:
        """Move chain time forward and mine a block (embedded chain or anvil only).

        Raises:
            ChainError: the chain does not support it (a public network).
        """
        def advance() -> None:
            if self._tester is not None:
                now = int(self.w3.eth.get_block("latest")["timestamp"])
                self._tester.time_travel(now + seconds)
                return
            try:
                self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
                self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            except Exception as exc:
                raise ChainError(f"this chain cannot advance time: {exc}") from None

        await self.run(advance)


_REASON = re.compile(r"(?:execution reverted|revert(?:ed)?)\W*(.*)", re.IGNORECASE | re.DOTALL)


def _contract_error(function: str, exc: Exception) -> ContractError:
    text = str(getattr(exc, "message", None) or exc)
    found = _REASON.search(text)
    reason = (found.group(1) if found else text).strip().strip("'\":").strip()
    return ContractError(f"{function} reverted: {reason or 'no reason given'}", reason=reason, function=function)
