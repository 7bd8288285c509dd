"""Prove and verify one checkpoint (in this process; :mod:`fabstir.zk.service` runs it off the event loop).

:class:`CheckpointStatement` is what a proof is about (chain, marketplace, job, cumulative tokens, transcript
hash); its ``commitment`` is the marketplace's ``usageDigest``. :func:`generate_proof` runs EZKL's witness
generation and prover (about 1.5 s, the GIL held throughout); :func:`verify_proof` checks a proof locally
against the statement (what :class:`CheckpointProofVerifier` checks on chain).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_abi.abi import decode, encode
from web3 import Web3

from fabstir.chain.checkpoint_proofs import usage_digest
from fabstir.errors import ProofError
from fabstir.zk.circuit import CIRCUIT_NAME, INPUTS, OUTPUTS, evaluate, public_inputs
from fabstir.zk.keys import CircuitKeys, load_ezkl

__all__ = ["CheckpointProof", "CheckpointStatement", "FIELD_MODULUS", "generate_proof", "verify_proof"]

FIELD_MODULUS = 21888242871839275222246405745257275088548364400416034343698204186575808495617
"""The BN254 scalar field: the circuit's values (a negative output ``v`` is ``FIELD_MODULUS + v``)."""


@dataclasses.dataclass(frozen=True)
class CheckpointStatement:
    """The checkpoint a proof is about."""

    chain_id: int
    marketplace: str
    job_id: int
    tokens: int
    """Cumulative tokens billed on the job at this checkpoint."""
    transcript_hash: bytes = b"\x00" * 32
    """The usage transcript hash (P1) at this checkpoint."""

    @property
    def commitment(self) -> bytes:
        """The marketplace's ``usageDigest(job, tokens, transcript hash)`` on this chain and contract."""
        return usage_digest(self.chain_id, self.marketplace, self.job_id, self.tokens, self.transcript_hash)

    @property
    def inputs(self) -> list[int]:
        """The circuit's public inputs (:func:`fabstir.zk.circuit.public_inputs`)."""
        return public_inputs(self.commitment, self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "marketplace": Web3.to_checksum_address(self.marketplace),
                "job_id": self.job_id, "tokens": self.tokens, "transcript_hash": "0x" + self.transcript_hash.hex()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointStatement:
        return cls(int(data["chain_id"]), str(data["marketplace"]), int(data["job_id"]), int(data["tokens"]),
                   bytes.fromhex(str(data["transcript_hash"]).removeprefix("0x")))


@dataclasses.dataclass(frozen=True)
class CheckpointProof:
    """A proof of one checkpoint: the SNARK, its public values, and EZKL's proof document."""

    statement: CheckpointStatement
    snark: bytes
    instances: tuple[int, ...]
    """The circuit's public values: the 36 inputs, then the 4 outputs (field elements)."""
    document: dict[str, Any] = dataclasses.field(repr=False, compare=False)
    """EZKL's proof JSON (what ``ezkl.verify`` reads)."""
    prove_s: float = 0.0

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.instances[INPUTS:]

    @property
    def proof_hash(self) -> bytes:
        """SHA-256 of the SNARK bytes (how the history names a proof)."""
        return hashlib.sha256(self.snark).digest()

    def calldata(self) -> bytes:
        """The ``proof`` argument of ``submitCheckpointProof``: ``abi.encode(bytes snark, uint256[] outputs)``."""
        return encode(["bytes", "uint256[]"], [self.snark, list(self.outputs)])

    def with_snark(self, snark: bytes) -> CheckpointProof:
        """The same proof with other SNARK bytes (tests: a tampered proof)."""
        return dataclasses.replace(self, snark=snark)

    def to_json(self) -> str:
        return json.dumps({"circuit": CIRCUIT_NAME, "statement": self.statement.to_dict(),
                           "snark": "0x" + self.snark.hex(), "instances": [str(v) for v in self.instances],
                           "prove_s": self.prove_s, "document": self.document}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointProof:
        """Raises: ProofError: not a checkpoint proof of this circuit (code PROOF_MALFORMED)."""
        try:
            data = json.loads(text)
            if data["circuit"] != CIRCUIT_NAME:
                raise ValueError(f"circuit {data['circuit']!r}")
            return cls(CheckpointStatement.from_dict(data["statement"]), bytes.fromhex(data["snark"][2:]),
                       tuple(int(v) for v in data["instances"]), dict(data["document"]), float(data["prove_s"]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ProofError(f"not a checkpoint proof: {exc}", code="PROOF_MALFORMED") from None

    @classmethod
    def from_calldata(cls, statement: CheckpointStatement, calldata: bytes) -> CheckpointProof:
        """A proof rebuilt from ``submitCheckpointProof``'s argument (no EZKL document: verify on chain)."""
        snark, outputs = decode(["bytes", "uint256[]"], calldata)
        return cls(statement, bytes(snark), tuple(statement.inputs) + tuple(int(v) for v in outputs), {})


def _felt(hex_le: str) -> int:
    return int.from_bytes(bytes.fromhex(hex_le), "little")


def generate_proof(keys: CircuitKeys, statement: CheckpointStatement) -> CheckpointProof:
    """Prove ``statement`` with ``keys`` (blocking, about 1.5 s).

    Raises:
        ProofError: ezkl is missing (ZK_UNAVAILABLE), the count does not fit the circuit or proving failed
            (PROOF_FAILED).
    """
    ezkl = load_ezkl()
    try:
        inputs = statement.inputs
    except ValueError as exc:
        raise ProofError(f"cannot prove this checkpoint: {exc}", code="PROOF_FAILED") from None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fabstir-proof-") as tmp:
        data, witness, proof_path = Path(tmp) / "input.json", Path(tmp) / "witness.json", Path(tmp) / "proof.json"
        data.write_text(json.dumps({"input_data": [[float(v) for v in inputs]]}), encoding="utf-8")
        try:
            ezkl.gen_witness(str(data), str(keys.compiled), str(witness))
            ezkl.prove(str(witness), str(keys.compiled), str(keys.pk), str(proof_path), srs_path=str(keys.srs))
        except RuntimeError as exc:
            raise ProofError(f"ezkl could not prove the checkpoint: {exc}", code="PROOF_FAILED") from None
        document: dict[str, Any] = json.loads(proof_path.read_text(encoding="utf-8"))
    instances = tuple(_felt(v) for v in document["instances"][0])
    if list(instances[:INPUTS]) != inputs or len(instances) != INPUTS + OUTPUTS:
        raise ProofError("the proof's public inputs are not the checkpoint's", code="PROOF_FAILED")
    expected = tuple(v % FIELD_MODULUS for v in evaluate(inputs))
    if instances[INPUTS:] != expected:
        raise ProofError("the proof's outputs are not the circuit's", code="PROOF_FAILED")
    return CheckpointProof(statement, bytes.fromhex(document["hex_proof"].removeprefix("0x")), instances, document,
                           time.perf_counter() - started)


def verify_proof(keys: CircuitKeys, proof: CheckpointProof) -> bool:
    """Whether ``proof`` verifies for its statement with ``keys`` (the public values are derived from the
    statement, as the contract does; the SNARK is checked by EZKL)."""
    ezkl = load_ezkl()
    try:
        inputs = proof.statement.inputs
    except ValueError:
        return False
    if len(proof.instances) != INPUTS + OUTPUTS or list(proof.instances[:INPUTS]) != inputs or not proof.document:
        return False
    document = dict(proof.document)
    document["instances"] = [[v.to_bytes(32, "little").hex() for v in proof.instances]]
    document["hex_proof"] = "0x" + proof.snark.hex()
    document["proof"] = list(proof.snark)
    with tempfile.TemporaryDirectory(prefix="fabstir-verify-") as tmp:
        path = Path(tmp) / "proof.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        try:
            return bool(ezkl.verify(str(path), str(keys.settings), str(keys.vk), srs_path=str(keys.srs)))
        except RuntimeError:
            return False
