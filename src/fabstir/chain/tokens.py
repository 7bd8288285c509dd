"""ERC-20 calls: the allowance escrow and stake need, and the development token's owner mint."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from fabstir.chain.backend import Chain

__all__ = ["ensure_allowance", "mint"]


async def ensure_allowance(chain: Chain, owner: LocalAccount, token: Contract, spender: str, amount: int) -> None:
    """``approve(spender, amount)`` on ``token`` unless ``owner`` already allows ``spender`` that much.

    Raises:
        ContractError: the token refused the approval.
    """
    allowance = int(await chain.call(token.functions.allowance(owner.address, spender)))
    if allowance < amount:
        await chain.transact(owner, token.functions.approve(spender, amount))


async def mint(chain: Chain, owner: LocalAccount, token: Contract, to: str, amount: int) -> None:
    """Mint ``amount`` of our development token to ``to`` (its owner only; local chains and the demo).

    Raises:
        ContractError: ``owner`` does not own the token.
    """
    await chain.transact(owner, token.functions.mint(Web3.to_checksum_address(to), amount))
