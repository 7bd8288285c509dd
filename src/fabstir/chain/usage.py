"""Consented billing: the depositor's countersignature of the tokens it received (our contracts only).

Theory of operation. As answers stream, the client keeps a :class:`UsageTranscript` of the job: the
cumulative tokens the node reported for every answer that ended (its ``stream_end``), and a running hash of
the answers' texts::

    h_0 = 0x00…00 (32 bytes)
    h_n = keccak256(h_{n-1} ‖ keccak256(utf8(text_n)))

where ``text_n`` is the n-th answer's text on this job exactly as streamed (the node hashes the same text,
which its signed receipt already covers). After each answer it signs :class:`UsageAck` ``(job id, cumulative
tokens, h_n)`` as EIP-712 typed data::

    domain  = {name: "Fabstir JobMarketplace", version: "1", chainId, verifyingContract: the marketplace}
    message = UsageAck(uint256 jobId, uint256 cumulativeTokens, bytes32 transcriptHash)

so a countersignature is worthless on another chain, another marketplace or another job. The host submits it
with ``submitCountersignedProof`` (accepted at once); claims without one are provisional and the depositor
can dispute them (``disputeUsage``) for the marketplace's dispute window. The contract refuses a signature
with ``s`` above half the curve order; :func:`usage_signer` does too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from web3 import Web3

__all__ = [
    "SECP256K1_HALF_ORDER",
    "TRANSCRIPT_START",
    "USAGE_DOMAIN_NAME",
    "USAGE_DOMAIN_VERSION",
    "UsageAck",
    "UsageRecord",
    "UsageTranscript",
    "next_transcript_hash",
    "sign_usage",
    "usage_message",
    "usage_signer",
]

USAGE_DOMAIN_NAME = "Fabstir JobMarketplace"
USAGE_DOMAIN_VERSION = "1"
TRANSCRIPT_START = bytes(32)
"""The transcript hash of a job before any answer."""
SECP256K1_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
    "UsageAck": [{"name": "jobId", "type": "uint256"}, {"name": "cumulativeTokens", "type": "uint256"},
                 {"name": "transcriptHash", "type": "bytes32"}],
}


def next_transcript_hash(previous: bytes, text: str) -> bytes:
    """``keccak256(previous ‖ keccak256(utf8(text)))``: the transcript hash after one more answer."""
    return bytes(Web3.keccak(previous + bytes(Web3.keccak(text.encode("utf-8")))))


@dataclasses.dataclass
class UsageTranscript:
    """One job's running usage as both ends compute it: answers ended, tokens they carried, their hash."""

    tokens: int = 0
    transcript_hash: bytes = TRANSCRIPT_START

    def add(self, text: str, tokens: int) -> None:
        """Count one more ended answer (its streamed ``text`` and the node's ``tokens`` for it)."""
        self.tokens += tokens
        self.transcript_hash = next_transcript_hash(self.transcript_hash, text)


@dataclasses.dataclass(frozen=True)
class UsageAck:
    """The depositor's countersignature of ``tokens`` received on ``job_id`` with transcript hash."""

    job_id: int
    tokens: int
    transcript_hash: bytes
    signature: bytes
    """65 bytes, ``r ‖ s ‖ v``."""


@dataclasses.dataclass(frozen=True)
class UsageRecord:
    """What the marketplace holds about a job's consented usage (``usage(jobId)``)."""

    acknowledged: int
    """The highest cumulative count the depositor countersigned (or disputed down to); tokens claimed above it
    are provisional."""
    disputed: bool
    """The depositor disputed a provisional claim: only countersigned claims are accepted now."""
    transcript_hash: bytes


def usage_message(chain_id: int, marketplace: str, job_id: int, tokens: int, transcript_hash: bytes
                  ) -> SignableMessage:
    """The EIP-712 message the depositor signs (its digest is the contract's ``usageDigest``)."""
    full: dict[str, Any] = {
        "types": _TYPES,
        "primaryType": "UsageAck",
        "domain": {"name": USAGE_DOMAIN_NAME, "version": USAGE_DOMAIN_VERSION, "chainId": chain_id,
                   "verifyingContract": Web3.to_checksum_address(marketplace)},
        "message": {"jobId": job_id, "cumulativeTokens": tokens, "transcriptHash": transcript_hash},
    }
    return encode_typed_data(full_message=full)


def sign_usage(account: LocalAccount, chain_id: int, marketplace: str, job_id: int, tokens: int,
               transcript_hash: bytes) -> UsageAck:
    """``account`` (the depositor) countersigns ``tokens`` received on ``job_id``."""
    signed = account.sign_message(usage_message(chain_id, marketplace, job_id, tokens, transcript_hash))
    return UsageAck(job_id, tokens, transcript_hash, bytes(signed.signature))


def usage_signer(chain_id: int, marketplace: str, ack: UsageAck) -> str | None:
    """The checksummed address that signed ``ack`` on this chain and marketplace (``None``: malformed, or
    high-s, which the contract refuses)."""
    signature = ack.signature
    if len(signature) != 65 or len(ack.transcript_hash) != 32 or ack.tokens < 0 or ack.job_id < 0:
        return None
    if int.from_bytes(signature[32:64], "big") > SECP256K1_HALF_ORDER or signature[64] not in (0, 1, 27, 28):
        return None
    try:
        message = usage_message(chain_id, marketplace, ack.job_id, ack.tokens, ack.transcript_hash)
        return str(Account.recover_message(message, signature=signature))
    except (ValueError, TypeError, OverflowError):
        return None
