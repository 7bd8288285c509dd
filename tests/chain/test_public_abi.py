"""Every contract function and event the SDK and the node use matches the public Fabstir contracts' client ABIs.

The list checked is not kept by hand: :func:`fabstir.chain.interface.client_interface` scans the package's
source for ``.functions.<name>`` and ``.events.<name>`` and resolves each name against the ABIs the code
binds. Run with ``-s`` to print it. The public ABIs are the copies in ``tests/data/public-abi`` (pinned by
SHA-256 in their README).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from fabstir.chain.contracts import CONTRACT_NAMES, load_artifact
from fabstir.chain.interface import (
    ERC20_FUNCTIONS,
    EXTRAS,
    PUBLIC_ABI_FILES,
    Member,
    Scope,
    canonical_signature,
    client_interface,
    member_detail,
)

PUBLIC_ABI_DIR = Path(__file__).resolve().parents[1] / "data" / "public-abi"


@cache
def public_abi(contract: str) -> tuple[dict[str, Any], ...]:
    """The public counterpart's client ABI of our ``contract`` (empty when there is none, e.g. the token)."""
    stem = PUBLIC_ABI_FILES.get(contract)
    if stem is None:
        return ()
    return tuple(json.loads((PUBLIC_ABI_DIR / f"{stem}.json").read_text(encoding="utf-8")))


def _shape(entry: dict[str, Any]) -> tuple[str, str]:
    return canonical_signature(entry), member_detail(entry)


def differences(members: tuple[Member, ...], abis: Any = public_abi) -> list[str]:
    """Why each member does not match the public ABIs (empty: all match)."""
    problems: list[str] = []
    for m in members:
        public = [e for e in abis(m.contract) if e.get("type") == m.kind and e.get("name") == m.name]
        where = f"{m.contract}.{m.signature} ({m.scope.value}, used at {m.used_at[0]})"
        if m.scope is Scope.PUBLIC:
            if not abis(m.contract):
                problems.append(f"{where}: {m.contract} has no public counterpart; mark it as an extra")
            elif (m.signature, m.detail) not in [_shape(e) for e in public]:
                found = ", ".join(" ".join(_shape(e)) for e in public) or "nothing of that name"
                problems.append(f"{where}: ours is {m.signature} {m.detail}; the public ABI has {found}")
        elif m.scope is Scope.EXTRA:
            if public:
                problems.append(f"{where}: marked ours-only, but the public ABI has {m.name}; it must match instead")
        elif m.scope is Scope.ERC20:
            if m.signature not in ERC20_FUNCTIONS:
                problems.append(f"{where}: not an EIP-20 function")
        elif m.scope is Scope.LEGACY:
            if not public or m.signature in [canonical_signature(e) for e in public]:
                problems.append(f"{where}: a legacy form must be an older form of a public function")
            if any(e.get("type") == m.kind and canonical_signature(e) == m.signature
                   for e in load_artifact(m.contract)["abi"]):
                problems.append(f"{where}: our contract must speak the reference form, not the legacy one")
    return problems


def test_the_copied_public_abis_are_unchanged() -> None:
    readme = (PUBLIC_ABI_DIR / "README.md").read_text(encoding="utf-8")
    pins = dict(re.findall(r"\| `([\w.]+\.json)` \| `([0-9a-f]{64})` \|", readme))
    files = sorted(p.name for p in PUBLIC_ABI_DIR.glob("*.json"))
    assert sorted(pins) == files == sorted(f"{stem}.json" for stem in PUBLIC_ABI_FILES.values())
    for name, digest in pins.items():
        assert hashlib.sha256((PUBLIC_ABI_DIR / name).read_bytes()).hexdigest() == digest, name


def test_every_selector_and_topic_the_code_uses_matches_the_public_abi() -> None:
    interface = client_interface()
    print(f"\n{len(interface.members)} members used by the SDK and the node:")
    for m in interface.members:
        print(f"  {m.scope.value:6} {m.contract:14} {m.kind:8} {m.signature} {m.detail} {m.selector}")
    assert interface.dynamic == ()
    assert interface.unresolved == ()
    assert differences(interface.members) == []
    # the scan found the calls the issue is about (a sanity check of the scanner, not the list compared)
    found = {(m.contract, m.signature) for m in interface.members}
    assert {("NodeRegistry", "MIN_STAKE()"), ("ProofSystem", "verifiedProofs(bytes32)"),
            ("JobMarketplace", "submitProofOfWork(uint256,uint256,bytes32,bytes,string,string)"),
            ("NodeRegistry", "getModelPricing(address,bytes32,address)"),
            ("JobMarketplace", "SessionCompleted(uint256,uint256,uint256,uint256)"),
            ("NodeRegistry", "ModelPricingUpdated(address,bytes32,uint256,uint256)")} <= found
    used_extras = {(m.contract, m.name) for m in interface.members if m.scope is Scope.EXTRA}
    assert used_extras == set(EXTRAS), "every ours-only entry in EXTRAS must be used, and only those"


def test_the_check_catches_a_difference(tmp_path: Path) -> None:
    """The old calls the issue names fail it: a name the public contracts lack, a changed event, ``getattr``."""
    source = tmp_path / "old_calls.py"
    source.write_text("\n".join([
        "def f(market, name):",
        "    market.node_registry.functions.minStake()",
        "    market.proof_system.functions.isProofUsed(b'')",
        "    market.node_registry.functions.setNodeActive(False)",
        "    events = market.marketplace.events",
        "    events.SessionCompleted().get_logs()",
        "    getattr(market.marketplace.functions, name)()",
    ]), encoding="utf-8")
    interface = client_interface([source])
    assert interface.unresolved == (f"function isProofUsed at {source}:3", f"function minStake at {source}:2")
    assert interface.dynamic == (f"getattr on .functions at {source}:7",)
    [problem] = differences(interface.members)  # setNodeActive is ours only and not marked as such
    assert problem.startswith("NodeRegistry.setNodeActive(bool) (public")

    def old_public(contract: str) -> tuple[dict[str, Any], ...]:  # the event as our contracts had it before
        old = {"type": "event", "name": "SessionCompleted", "anonymous": False, "inputs": [
            {"name": n, "type": "uint256", "indexed": n == "jobId"}
            for n in ("jobId", "totalTokensUsed", "hostEarnings", "treasuryFee", "userRefund")]}
        return tuple(e for e in public_abi(contract) if e.get("name") != "SessionCompleted") + (old,)

    completed = [m for m in interface.members if m.name == "SessionCompleted"]
    [problem] = differences(tuple(completed), old_public)
    assert "SessionCompleted(uint256,uint256,uint256,uint256,uint256)" in problem


@pytest.mark.parametrize("contract", [name for name in CONTRACT_NAMES if name in PUBLIC_ABI_FILES])
def test_our_contracts_match_the_public_ones_wherever_both_have_a_name(contract: str) -> None:
    """Beyond what the code calls: any function or event name both have must have the same shapes."""
    ours: dict[tuple[str, str], set[tuple[str, str]]] = {}
    theirs: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for table, abi in ((ours, load_artifact(contract)["abi"]), (theirs, public_abi(contract))):
        for entry in abi:
            if entry.get("type") in ("function", "event"):
                table.setdefault((entry["type"], entry["name"]), set()).add(_shape(entry))
    mismatched = {key: (ours[key], theirs[key]) for key in ours.keys() & theirs.keys() if ours[key] != theirs[key]}
    assert mismatched == {}
