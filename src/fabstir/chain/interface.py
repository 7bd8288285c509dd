"""The contract interface that the SDK and the node use, enumerated from their own source.

Theory of operation: every contract call and event read in the ``fabstir`` package is written as
``<contract>.functions.<name>(...)`` or ``<contract>.events.<name>()``, directly or through a variable
assigned ``<contract>.functions``/``.events`` in the same module; ``getattr`` on them is not allowed, so the
scan sees every name.
:func:`client_interface` parses the package's source for those names, resolves each against the ABIs the
contracts are bound with (:func:`client_abi`), and returns one :class:`Member` per function overload or
event, with its selector or topic and its :class:`Scope`. A test compares every ``PUBLIC`` member with the
public Fabstir contracts' client ABIs, so one SDK and one node speak both networks. What the code may use
without the public contracts having it is marked here, each with its reason: :data:`EXTRAS`.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from web3 import Web3

from fabstir.chain.contracts import CONTRACT_NAMES, client_abi
from fabstir.chain.proofs import UNSIGNED_SUBMIT_ABI

__all__ = [
    "ERC20_FUNCTIONS",
    "EXTRAS",
    "Interface",
    "Member",
    "PUBLIC_ABI_FILES",
    "Scope",
    "canonical_signature",
    "client_interface",
    "member_detail",
]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The ``fabstir`` package directory whose source is scanned."""


class Scope(enum.Enum):
    """How a member relates to the public contracts."""

    PUBLIC = "public"
    """The public contract has it with the same selector or topic, outputs and indexed fields."""
    EXTRA = "extra"
    """Only our contracts have it (ours only, see :data:`EXTRAS`); the public contract has no such name."""
    ERC20 = "erc20"
    """The EIP-20 token standard (the public client ABIs hold no token contract)."""
    LEGACY = "legacy"
    """An older public form that is not in the reference ABI (the unsigned ``submitProofOfWork``)."""


PUBLIC_ABI_FILES: dict[str, str] = {
    "NodeRegistry": "NodeRegistryWithModelsUpgradeable",
    "JobMarketplace": "JobMarketplaceWithModelsUpgradeable",
    "ProofSystem": "ProofSystemUpgradeable",
    "HostEarnings": "HostEarningsUpgradeable",
    "ModelRegistry": "ModelRegistryUpgradeable",
}
"""Our contract -> the stem of its public counterpart's client ABI file."""

EXTRAS: dict[tuple[str, str], str] = {
    ("FabstirToken", "mint"): "owner mint of our development token (local chains and the demo only)",
    ("JobMarketplace", "marketplaceFeatures"): "our rules' feature bits; called only once its selector is found "
                                               "in the contract's code, so never on the public contracts",
    ("JobMarketplace", "submitCountersignedProof"): "consented billing (P1): sent only where marketplaceFeatures "
                                                    "has FEATURE_USAGE_COUNTERSIGN",
    ("JobMarketplace", "disputeUsage"): "consented billing (P1): the depositor's answer to a provisional claim, "
                                        "ours only",
    ("JobMarketplace", "usage"): "consented billing (P1): read only where marketplaceFeatures has "
                                 "FEATURE_USAGE_COUNTERSIGN",
    ("JobMarketplace", "submitCheckpointProof"): "checkpoint proofs (P3): sent only where marketplaceFeatures has "
                                                 "FEATURE_CHECKPOINT_PROOFS",
    ("JobMarketplace", "CheckpointProven"): "checkpoint proofs (P3): the on-chain proof history, ours only",
    ("ProofSystem", "checkpointVerifier"): "checkpoint proofs (P3): read only where marketplaceFeatures has "
                                           "FEATURE_CHECKPOINT_PROOFS",
    ("ProofSystem", "setCheckpointVerifier"): "checkpoint proofs (P3): owner wiring on local chains and new "
                                              "deployments",
    ("JobMarketplace", "setSubstitutionValidator"): "substitution disputes (P2): owner wiring, ours only",
    ("JobMarketplace", "substitutionValidator"): "substitution disputes (P2): read only where marketplaceFeatures "
                                                 "has FEATURE_SUBSTITUTION_DISPUTES",
    ("JobMarketplace", "reportSubstitution"): "substitution disputes (P2): sent only where marketplaceFeatures has "
                                              "FEATURE_SUBSTITUTION_DISPUTES",
    ("JobMarketplace", "substitutionEvidence"): "substitution disputes (P2): read only where marketplaceFeatures "
                                                "has FEATURE_SUBSTITUTION_DISPUTES",
    ("JobMarketplace", "SUBSTITUTION_SLASH_BPS"): "substitution disputes (P2): read only where "
                                                  "marketplaceFeatures has FEATURE_SUBSTITUTION_DISPUTES",
    ("JobMarketplace", "SubstitutionReported"): "substitution disputes (P2): the on-chain record of upheld "
                                                "reports, ours only",
    ("NodeRegistry", "NodeActiveChanged"): "our real active flag (setNodeActive); the public flag never changes",
    ("NodeRegistry", "StakeAdded"): "our stake() event; the public registry emits none for added stake",
    ("NodeRegistry", "StakeSlashed"): "our slash() event (substitution reports); discovery re-reads a slashed "
                                      "host's stake. The public registry's slashing is not offered",
    ("NodeRegistry", "StakeUnbonding"): "stake unbonding after unregisterNode (slashable until released), ours "
                                        "only: on the public registry the stake comes back at once and the "
                                        "event never appears",
    ("NodeRegistry", "unbondingStake"): "stake unbonding after unregisterNode, ours only (`fabstir node "
                                        "withdraw-stake`, tests)",
    ("NodeRegistry", "withdrawUnbondedStake"): "stake unbonding after unregisterNode, ours only (`fabstir node "
                                               "withdraw-stake`)",
    ("NodeRegistry", "UnbondedStakeWithdrawn"): "stake unbonding after unregisterNode, ours only",
    ("NodeRegistry", "setStakeUnbondingPeriod"): "owner wiring of stake unbonding, ours only (local chains, tests)",
    ("JobMarketplace", "substitutionReportWindow"): "substitution disputes (P2): read only where "
                                                    "marketplaceFeatures has FEATURE_SUBSTITUTION_DISPUTES",
    ("JobMarketplace", "setSubstitutionReportWindow"): "substitution disputes (P2): owner wiring, ours only",
}
"""Members only our contracts have, with the reason the code may use them. Ours only: on the public
network the call is never made (dev-chain tooling) or the event simply never appears."""

ERC20_FUNCTIONS = frozenset({
    "allowance(address,address)", "approve(address,uint256)", "balanceOf(address)", "decimals()",
    "totalSupply()", "transfer(address,uint256)", "transferFrom(address,address,uint256)",
})
"""EIP-20 function signatures."""


def _type(entry: dict[str, Any]) -> str:
    kind = str(entry["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_type(c) for c in entry["components"]) + ")" + kind[len("tuple"):]
    return kind


def canonical_signature(entry: dict[str, Any]) -> str:
    """``name(type,...)`` of an ABI function or event entry."""
    return f"{entry['name']}({','.join(_type(i) for i in entry.get('inputs', []))})"


def member_detail(entry: dict[str, Any]) -> str:
    """What decoding depends on beyond the selector or topic: a function's outputs, an event's indexed fields."""
    if entry["type"] == "function":
        return "returns (" + ",".join(_type(o) for o in entry.get("outputs", [])) + ")"
    indexed = [i.get("name") or str(n) for n, i in enumerate(entry.get("inputs", [])) if i.get("indexed")]
    return "indexed (" + ",".join(indexed) + ")"


def _selector(entry: dict[str, Any]) -> str:
    """A function's selector (first 4 bytes of the signature's keccak256) or an event's topic (all 32)."""
    digest = bytes(Web3.keccak(text=canonical_signature(entry)))
    return "0x" + (digest[:4] if entry["type"] == "function" else digest).hex()


@dataclasses.dataclass(frozen=True)
class Member:
    """One function overload or event that the package's code uses."""

    contract: str
    kind: str
    """``"function"`` or ``"event"``."""
    name: str
    signature: str
    selector: str
    """A function's 4-byte selector, or an event's topic 0, as ``0x`` hex."""
    detail: str
    scope: Scope
    used_at: tuple[str, ...]
    """``path:line`` of each use, relative to the package's parent directory."""


@dataclasses.dataclass(frozen=True)
class Interface:
    """What :func:`client_interface` found."""

    members: tuple[Member, ...]
    unresolved: tuple[str, ...]
    """Uses whose name no bound ABI has (``kind name at path:line``)."""
    dynamic: tuple[str, ...]
    """Uses the scan cannot follow: ``getattr`` on ``.functions``/``.events``."""


_KINDS = {"functions": "function", "events": "event"}


def _namespace(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``"functions"``/``"events"`` when ``node`` is ``<x>.functions``/``<x>.events`` or a name bound to one."""
    if isinstance(node, ast.Attribute) and node.attr in _KINDS:
        return node.attr
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    return None


def _scan(path: Path, where: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases = {target.id: node.value.attr for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and isinstance(node.value, ast.Attribute) and node.value.attr in _KINDS
               for target in node.targets if isinstance(target, ast.Name)}
    uses: list[tuple[str, str, str]] = []
    dynamic: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (space := _namespace(node.value, aliases)):
            uses.append((_KINDS[space], node.attr, f"{where}:{node.lineno}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and node.args and (space := _namespace(node.args[0], aliases))):
            dynamic.append(f"getattr on .{space} at {where}:{node.lineno}")
    return uses, dynamic


def _scope(contract: str, entry: dict[str, Any]) -> Scope:
    if (contract, entry["name"]) in EXTRAS:
        return Scope.EXTRA
    if contract == "FabstirToken" and canonical_signature(entry) in ERC20_FUNCTIONS:
        return Scope.ERC20
    if entry is UNSIGNED_SUBMIT_ABI:
        return Scope.LEGACY
    return Scope.PUBLIC


def client_interface(files: Iterable[Path] | None = None) -> Interface:
    """Every contract function and event used by the package's code (or by ``files``), sorted.

    A name that several of our contracts have (``setAuthorizedCaller``) yields a member for each, and a
    name with overloads yields each overload, so every entry the call may resolve to is checked.
    """
    paths = sorted(PACKAGE_ROOT.rglob("*.py")) if files is None else sorted(files)
    uses: dict[tuple[str, str], list[str]] = {}
    dynamic: list[str] = []
    for path in paths:
        where = path.relative_to(PACKAGE_ROOT.parent).as_posix() if path.is_relative_to(PACKAGE_ROOT) else str(path)
        found, odd = _scan(path, where)
        dynamic += odd
        for kind, name, at in found:
            uses.setdefault((kind, name), []).append(at)
    members: list[Member] = []
    unresolved: list[str] = []
    for (kind, name), places in sorted(uses.items()):
        matched = False
        for contract in CONTRACT_NAMES:
            for entry in client_abi(contract):
                if entry.get("type") == kind and entry.get("name") == name:
                    matched = True
                    members.append(Member(contract, kind, name, canonical_signature(entry), _selector(entry),
                                          member_detail(entry), _scope(contract, entry), tuple(places)))
        if not matched:
            unresolved.append(f"{kind} {name} at {', '.join(places)}")
    members.sort(key=lambda m: (m.contract, m.kind, m.signature))
    return Interface(tuple(members), tuple(unresolved), tuple(dynamic))
