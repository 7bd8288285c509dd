"""Deploy and wire the marketplace contracts (local chains and new networks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from fabstir.chain.backend import Chain
from fabstir.chain.contracts import Deployment, Marketplace, load_artifact

__all__ = ["ModelSpec", "StepProgress", "deploy_marketplace", "deploy_steps", "DEFAULT_MIN_STAKE", "STABLE_MIN_DEPOSIT", "STABLE_MAX_DEPOSIT"]

StepProgress = Callable[[int, int, str], None]
"""``(steps done, steps in all, the step just done)`` while the marketplace deploys (called from a worker thread)."""

ModelSpec = tuple[str, str, bytes]
"""``(repo, file_name, sha256)`` of a model to approve in the ModelRegistry."""

DEFAULT_MIN_STAKE = 1000 * 10**18
STABLE_MIN_DEPOSIT = 500_000  # 0.50 of a 6-decimal stablecoin
STABLE_MAX_DEPOSIT = 10**12


def _deploy_sync(chain: Chain, deployer: LocalAccount, name: str, *args: Any) -> str:
    artifact = load_artifact(name)
    factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = chain.transact_sync(deployer, factory.constructor(*args), label=f"deploy {name}")
    return str(receipt["contractAddress"])


def _deploy_all_sync(
    chain: Chain,
    deployer: LocalAccount,
    models: Sequence[ModelSpec],
    fee_basis_points: int,
    dispute_window: int,
    inactivity_timeout: int,
    max_tokens_per_second: int,
    min_stake: int,
    progress: StepProgress | None = None,
) -> Deployment:
    total = deploy_steps(len(models))
    done = 0

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    def deploy(name: str, *args: Any) -> str:
        address = _deploy_sync(chain, deployer, name, *args)
        step(f"deployed {name}")
        return address

    fab = deploy("FabstirToken", "Fabstir Token", "FAB", 18)
    usdc = deploy("FabstirToken", "Local USD Coin", "USDC", 6)
    models_addr = deploy("ModelRegistry")
    nodes = deploy("NodeRegistry", fab, models_addr, min_stake)
    earnings = deploy("HostEarnings")
    proofs = deploy("ProofSystem")
    market = deploy("JobMarketplace", nodes, earnings, proofs, fee_basis_points, dispute_window,
                    inactivity_timeout, max_tokens_per_second)
    deployment = Deployment(chain_id=chain.chain_id, stake_token=fab, stable_token=usdc, model_registry=models_addr,
                            node_registry=nodes, host_earnings=earnings, proof_system=proofs, marketplace=market,
                            fee_basis_points=fee_basis_points, dispute_window=dispute_window)
    bound = Marketplace(chain, deployment)
    def send(call: Any) -> None:
        chain.transact_sync(deployer, call)
        step(f"called {getattr(call, 'fn_name', 'the contract')}")

    send(bound.host_earnings.functions.setAuthorizedCaller(Web3.to_checksum_address(market), True))
    send(bound.proof_system.functions.setAuthorizedCaller(Web3.to_checksum_address(market), True))
    send(bound.node_registry.functions.setSlashingAuthority(Web3.to_checksum_address(market)))
    send(bound.marketplace.functions.addAcceptedToken(Web3.to_checksum_address(usdc), STABLE_MIN_DEPOSIT,
                                                      STABLE_MAX_DEPOSIT))
    for repo, file_name, digest in models:
        send(bound.model_registry.functions.addTrustedModel(repo, file_name, digest))
    return deployment


async def deploy_marketplace(
    chain: Chain,
    deployer: LocalAccount,
    *,
    models: Sequence[ModelSpec] = (),
    fee_basis_points: int = 1000,
    dispute_window: int = 30,
    inactivity_timeout: int = 3600,
    max_tokens_per_second: int = 1000,
    min_stake: int = DEFAULT_MIN_STAKE,
    progress: StepProgress | None = None,
) -> Deployment:
    """Deploy every contract, wire them together, accept the local stablecoin and approve ``models``.

    The deployer owns the contracts and is the treasury; the marketplace is the NodeRegistry's slashing
    authority (substitution disputes), with no validator appointed yet. Returns the :class:`Deployment`
    record other processes load with ``--config``. ``progress`` follows the transactions
    (:func:`deploy_steps` of them).
    """
    return await chain.run(_deploy_all_sync, chain, deployer, models, fee_basis_points, dispute_window,
                           inactivity_timeout, max_tokens_per_second, min_stake, progress)


def deploy_steps(models: int) -> int:
    """Transactions :func:`deploy_marketplace` sends: seven contracts, four wiring calls, one per model."""
    return 7 + 4 + models
