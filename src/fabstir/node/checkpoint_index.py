"""The checkpoint index the public node serves at ``GET /v1/checkpoints/{session_id}`` (PROTOCOL §8.4).

::

    {"sessionId": "139", "hostAddress": "0x<host, lower case>",
     "checkpoints": [{"index", "proofHash", "deltaCid", "tokenRange": [start, end], "timestamp"}],
     "hostSignature": "0x<130 hex>"}

One entry per checkpoint this node submitted for the job, in chain order: ``index`` is the proof's position
for ``getProofSubmission(jobId, index)``, ``proofHash`` the bytes32 it submitted, ``tokenRange`` the cumulative
token counts before and after it, ``timestamp`` the Unix time in milliseconds at which the node saw it land.
``hostSignature`` is the host's EIP-191 ``personal_sign`` over the compact, key-sorted JSON of ``checkpoints``
(v = 27/28), so anyone can check that the host's key vouches for the list, and each ``proofHash`` against the
chain.

This node publishes no conversation deltas (nothing goes to S5), so ``deltaCid`` is ``""``. It is kept, not
omitted: the public SDK refuses a whole index whose entries lack a string ``deltaCid``, while an empty one still
lets it verify every proof hash on chain; only fetching the delta then fails (``DELTA_FETCH_FAILED``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from fabstir.errors import RemoteProtocolError

__all__ = ["CheckpointRecord", "build_index", "checkpoints_json", "index_signer", "verify_index"]


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint the node submitted and saw land on chain, as its billing ledger keeps it."""

    index: int
    """0-based position among the job's proofs on chain."""
    proof_hash: bytes
    token_start: int
    """Tokens billed on the job before this checkpoint."""
    token_end: int
    """Tokens billed on the job with this checkpoint."""
    timestamp_ms: int

    def to_wire(self) -> dict[str, Any]:
        """The index entry, in the public node's field names."""
        return {"index": self.index, "proofHash": "0x" + self.proof_hash.hex(), "deltaCid": "",
                "tokenRange": [self.token_start, self.token_end], "timestamp": self.timestamp_ms}


def checkpoints_json(checkpoints: Sequence[Mapping[str, Any]]) -> str:
    """The text the host signs: the ``checkpoints`` list as compact JSON with sorted keys (as serde_json and
    JavaScript write it: no spaces, non-ASCII characters as they are)."""
    return json.dumps(list(checkpoints), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def build_index(session_id: str, host: LocalAccount, records: Sequence[CheckpointRecord]) -> dict[str, Any]:
    """The signed index of ``records`` for ``session_id``, signed by ``host`` (the job's host account)."""
    entries = [record.to_wire() for record in records]
    signed = host.sign_message(encode_defunct(text=checkpoints_json(entries)))
    return {"sessionId": session_id, "hostAddress": host.address.lower(), "checkpoints": entries,
            "hostSignature": "0x" + bytes(signed.signature).hex()}


def index_signer(index: Mapping[str, Any]) -> str:
    """The address (checksummed) whose key signed ``index``'s ``checkpoints``.

    Raises:
        RemoteProtocolError: ``checkpoints`` is not a list or ``hostSignature`` is not a 65-byte signature.
    """
    checkpoints, signature = index.get("checkpoints"), index.get("hostSignature")
    if not isinstance(checkpoints, list) or not isinstance(signature, str):
        raise RemoteProtocolError("a checkpoint index needs a checkpoints list and a hostSignature")
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        if len(raw) != 65:
            raise ValueError("not 65 bytes")
        return str(Account.recover_message(encode_defunct(text=checkpoints_json(checkpoints)), signature=raw))
    except Exception:  # eth_account raises several types for a bad signature
        raise RemoteProtocolError("the checkpoint index's hostSignature is invalid") from None


def verify_index(index: Mapping[str, Any], host: str) -> bool:
    """Whether ``index`` names ``host`` and is signed by ``host``'s key (a malformed index is not)."""
    try:
        signer = index_signer(index)
    except RemoteProtocolError:
        return False
    named = index.get("hostAddress")
    return isinstance(named, str) and named.lower() == host.lower() == signer.lower()
