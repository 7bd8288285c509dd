"""Checkpoint proofs on chain: the two ``submitProofOfWork`` forms, the host's signature, and a probe.

Deployed marketplaces speak one of two forms. The public contracts' reference ABI (and ours) take the
host's signature as a fourth argument::

    submitProofOfWork(uint256 jobId, uint256 tokensClaimed, bytes32 proofHash, bytes signature,
                      string proofCID, string deltaCID)

where ``signature`` is the host's eth_sign signature (``"\\x19Ethereum Signed Message:\\n32"`` prefix) of
``keccak256(abi.encodePacked(proofHash, host, tokensClaimed))``. Other public deployments take the older
five-argument form without it. :func:`detect_proof_form` finds which one a contract speaks by looking for
each form's selector in its runtime code, following an ERC-1967 proxy (the public contracts are UUPS
proxies) to its implementation.

What our marketplace adds to the public one is found the same way: :func:`has_features_getter_sync` looks for
the selector of ``marketplaceFeatures()`` (which the public contracts lack) before anything calls it, and the
bits it returns (:data:`FEATURE_EXACT_BILLING`, ...) say which of our rules apply.
"""

from __future__ import annotations

import enum
from typing import Any

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from web3 import Web3

from fabstir.errors import ChainError

__all__ = [
    "ERC1967_IMPLEMENTATION_SLOT",
    "FEATURES_GETTER",
    "FEATURE_EXACT_BILLING",
    "FEATURE_SUBSTITUTION_DISPUTES",
    "FEATURE_USAGE_COUNTERSIGN",
    "ProofForm",
    "SIGNED_SUBMIT",
    "UNSIGNED_SUBMIT",
    "UNSIGNED_SUBMIT_ABI",
    "detect_proof_form_sync",
    "has_features_getter_sync",
    "proof_digest",
    "sign_proof",
]

SIGNED_SUBMIT = "submitProofOfWork(uint256,uint256,bytes32,bytes,string,string)"
"""The reference form (the public contracts' client ABI, and ours)."""
UNSIGNED_SUBMIT = "submitProofOfWork(uint256,uint256,bytes32,string,string)"
"""The older form without a signature, still spoken by some public deployments."""

FEATURES_GETTER = "marketplaceFeatures()"
"""Our marketplace's bit set of what it adds to the public contracts (which lack the function)."""
FEATURE_EXACT_BILLING = 1
"""``marketplaceFeatures`` bit: any positive claim is accepted, so billed == served (no 100-token minimum)."""
FEATURE_USAGE_COUNTERSIGN = 2
"""``marketplaceFeatures`` bit: depositor-countersigned checkpoints (``submitCountersignedProof``) and disputes of
provisional claims (``disputeUsage``); see :mod:`fabstir.chain.usage`."""
FEATURE_SUBSTITUTION_DISPUTES = 8
"""``marketplaceFeatures`` bit: the owner-appointed validator's ``reportSubstitution`` closes a job unpaid, refunds
the whole deposit and slashes the host's stake; see :mod:`fabstir.chain.substitution`."""

UNSIGNED_SUBMIT_ABI: dict[str, Any] = {
    "type": "function",
    "name": "submitProofOfWork",
    "stateMutability": "nonpayable",
    "inputs": [
        {"name": "jobId", "type": "uint256", "internalType": "uint256"},
        {"name": "tokensClaimed", "type": "uint256", "internalType": "uint256"},
        {"name": "proofHash", "type": "bytes32", "internalType": "bytes32"},
        {"name": "proofCID", "type": "string", "internalType": "string"},
        {"name": "deltaCID", "type": "string", "internalType": "string"},
    ],
    "outputs": [],
}
"""ABI entry of :data:`UNSIGNED_SUBMIT`; our contracts do not have it, so it is added when binding."""

ERC1967_IMPLEMENTATION_SLOT = int.from_bytes(Web3.keccak(text="eip1967.proxy.implementation"), "big") - 1
"""Storage slot where an ERC-1967 proxy keeps its implementation's address."""

_PUSH4 = b"\x63"


class ProofForm(enum.Enum):
    """Which ``submitProofOfWork`` a marketplace speaks."""

    SIGNED = SIGNED_SUBMIT
    UNSIGNED = UNSIGNED_SUBMIT

    @property
    def selector(self) -> bytes:
        return bytes(Web3.keccak(text=self.value))[:4]


def proof_digest(proof_hash: bytes, host: str, tokens_claimed: int) -> bytes:
    """``keccak256(abi.encodePacked(proofHash, host, tokensClaimed))``, the digest the host signs."""
    return bytes(Web3.solidity_keccak(["bytes32", "address", "uint256"],
                                      [proof_hash, Web3.to_checksum_address(host), tokens_claimed]))


def sign_proof(account: LocalAccount, proof_hash: bytes, tokens_claimed: int) -> bytes:
    """The 65-byte ``r ‖ s ‖ v`` eth_sign signature of :func:`proof_digest` by ``account`` (the host)."""
    signed = account.sign_message(encode_defunct(primitive=proof_digest(proof_hash, account.address,
                                                                        tokens_claimed)))
    return bytes(signed.signature)


def _runtime_code(w3: Web3, address: str) -> bytes:
    """The code that runs for calls to ``address``: its implementation's when it is an ERC-1967 proxy."""
    address = Web3.to_checksum_address(address)
    code = bytes(w3.eth.get_code(address))
    if not code:
        raise ChainError(f"no contract at {address}", code="NO_CONTRACT")
    slot = bytes(w3.eth.get_storage_at(address, ERC1967_IMPLEMENTATION_SLOT))
    implementation = int.from_bytes(slot[-20:], "big")
    if implementation:
        target = bytes(w3.eth.get_code(Web3.to_checksum_address(implementation.to_bytes(20, "big"))))
        if target:
            return target
    return code


def detect_proof_form_sync(w3: Web3, address: str) -> ProofForm:
    """The form the marketplace at ``address`` speaks, from the selectors in its (implementation's) code.

    A contract dispatches on each selector it implements with a ``PUSH4 <selector>``; when neither form's
    selector shows up (an unusual proxy), the reference form :attr:`ProofForm.SIGNED` is assumed.

    Raises:
        ChainError: there is no contract at ``address`` (code ``NO_CONTRACT``).
    """
    code = _runtime_code(w3, address)
    if _PUSH4 + ProofForm.SIGNED.selector in code:
        return ProofForm.SIGNED
    if _PUSH4 + ProofForm.UNSIGNED.selector in code:
        return ProofForm.UNSIGNED
    return ProofForm.SIGNED


def has_features_getter_sync(w3: Web3, address: str) -> bool:
    """Whether the marketplace at ``address`` has ``marketplaceFeatures()`` (ours; the public ones do not).

    Raises:
        ChainError: there is no contract at ``address`` (code ``NO_CONTRACT``).
    """
    return _PUSH4 + bytes(Web3.keccak(text=FEATURES_GETTER))[:4] in _runtime_code(w3, address)
