"""Compiled artifacts, deployment records and bound contract objects."""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

from fabstir.chain.backend import Chain
from fabstir.chain.proofs import UNSIGNED_SUBMIT_ABI
from fabstir.errors import ConfigError

__all__ = ["CONTRACT_NAMES", "Deployment", "Marketplace", "client_abi", "load_artifact", "model_id"]

CONTRACT_NAMES = ("FabstirToken", "ModelRegistry", "NodeRegistry", "HostEarnings", "ProofSystem", "JobMarketplace")


@functools.cache
def load_artifact(name: str) -> dict[str, Any]:
    """The committed ABI and bytecode of contract ``name`` (built by scripts/build_contracts.py)."""
    text = resources.files("fabstir.chain.artifacts").joinpath(f"{name}.json").read_text(encoding="utf-8")
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def client_abi(name: str) -> list[dict[str, Any]]:
    """The ABI contract ``name`` is bound with: our artifact's, plus the unsigned ``submitProofOfWork`` form
    for ``JobMarketplace``, so the node can also speak public deployments that still use it."""
    abi = list(load_artifact(name)["abi"])
    if name == "JobMarketplace":
        abi.append(UNSIGNED_SUBMIT_ABI)
    return abi


def model_id(repo: str, file_name: str) -> bytes:
    """The ModelRegistry id of a model: ``keccak256(repo + "/" + file_name)``."""
    return bytes(Web3.keccak(text=f"{repo}/{file_name}"))


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Where the marketplace's contracts live on one chain, and how they were configured."""

    chain_id: int
    stake_token: str
    stable_token: str
    model_registry: str
    node_registry: str
    host_earnings: str
    proof_system: str
    marketplace: str
    fee_basis_points: int = 1000
    dispute_window: int = 30

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - set(data)
        if missing:
            raise ConfigError(f"deployment record lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read deployment {path}: {exc}") from None


class Marketplace:
    """The deployed contracts of one :class:`Deployment`, bound to a :class:`Chain`."""

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        if chain.chain_id != deployment.chain_id:
            raise ConfigError(f"deployment is for chain {deployment.chain_id}, connected to {chain.chain_id}")
        self.chain = chain
        self.deployment = deployment
        bind = functools.partial(_bind, chain.w3)
        self.stake_token = bind("FabstirToken", deployment.stake_token)
        self.stable_token = bind("FabstirToken", deployment.stable_token)
        self.model_registry = bind("ModelRegistry", deployment.model_registry)
        self.node_registry = bind("NodeRegistry", deployment.node_registry)
        self.host_earnings = bind("HostEarnings", deployment.host_earnings)
        self.proof_system = bind("ProofSystem", deployment.proof_system)
        self.marketplace = bind("JobMarketplace", deployment.marketplace)

    def token(self, address: str) -> Contract:
        """An ERC20 at ``address`` (for sessions paid in another token)."""
        return _bind(self.chain.w3, "FabstirToken", address)


def _bind(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=client_abi(name))
