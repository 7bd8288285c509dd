"""The checkpoint circuit: what a checkpoint proof proves, as an ONNX graph and its public inputs.

The statement. For a checkpoint of job ``j`` at ``n`` cumulative tokens with transcript hash ``t`` on the
marketplace ``m`` of chain ``c``, the marketplace computes the P1 usage commitment::

    D = usageDigest(j, n, t)      # EIP-712 over (c, m, j, n, t), see fabstir.chain.usage

and the circuit's public inputs are the 32 bytes of ``D`` followed by the 4 little-endian bytes of ``n``
(``x``, 36 integers in 0..255), and its public outputs the 4 integers ``y = W2 · relu(W1 · x + b1)`` of a
fixed two-layer network whose integer weights (seeded, :data:`WEIGHT_SEED`) are part of the verifying key.
A proof shows that this network was evaluated on exactly that commitment: it cannot be moved to another job,
token count, transcript, chain or marketplace, and cannot be made without running the prover over it.
It does not prove that the LLM generated the tokens (see docs/proofs.md, P3).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

__all__ = [
    "CIRCUIT_NAME",
    "COMMITMENT_BYTES",
    "HIDDEN",
    "INPUTS",
    "LOGROWS",
    "MAX_TOKENS",
    "OUTPUTS",
    "RUN_ARGS",
    "TOKEN_BYTES",
    "WEIGHT_SEED",
    "circuit_id",
    "evaluate",
    "onnx_model_bytes",
    "public_inputs",
    "weights",
]

CIRCUIT_NAME = "fabstir-checkpoint-v1"
COMMITMENT_BYTES = 32
TOKEN_BYTES = 4
INPUTS = COMMITMENT_BYTES + TOKEN_BYTES
HIDDEN = 16
OUTPUTS = 4
MAX_TOKENS = 2 ** (8 * TOKEN_BYTES) - 1
"""The largest cumulative token count a checkpoint proof can carry."""
WEIGHT_SEED = 20_261_206
LOGROWS = 12
"""2^12 rows: the circuit uses about 860; the ReLU's range checks use 7-bit limbs (base 128, 4 legs)."""
RUN_ARGS: dict[str, Any] = {
    "input_visibility": "public",
    "output_visibility": "public",
    "param_visibility": "fixed",
    "input_scale": 0,
    "param_scale": 0,
    "logrows": LOGROWS,
    "decomp_base": 128,
    "decomp_legs": 4,
    "lookup_range": (-128, 128),
}
"""EZKL run arguments: integers only (scale 0), so inputs and outputs are exact field elements."""


def weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W1 [36x16], b1 [16], W2 [16x4])``: small integers from a fixed seed."""
    rng = np.random.default_rng(WEIGHT_SEED)
    w1 = rng.integers(-3, 4, size=(INPUTS, HIDDEN)).astype(np.float32)
    b1 = rng.integers(-64, 64, size=(HIDDEN,)).astype(np.float32)
    w2 = rng.integers(-3, 4, size=(HIDDEN, OUTPUTS)).astype(np.float32)
    return w1, b1, w2


def public_inputs(commitment: bytes, tokens: int) -> list[int]:
    """The circuit's 36 public inputs for a checkpoint: the commitment's bytes, then ``tokens`` little-endian."""
    if len(commitment) != COMMITMENT_BYTES:
        raise ValueError(f"a commitment has {COMMITMENT_BYTES} bytes, not {len(commitment)}")
    if not 0 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be in 0..{MAX_TOKENS}")
    return list(commitment) + list(tokens.to_bytes(TOKEN_BYTES, "little"))


def evaluate(inputs: list[int]) -> list[int]:
    """The network's outputs for ``inputs`` (what the proof's public outputs must be)."""
    w1, b1, w2 = (w.astype(np.int64) for w in weights())
    hidden = np.maximum(np.asarray(inputs, dtype=np.int64) @ w1 + b1, 0)
    return [int(v) for v in hidden @ w2]


def onnx_model_bytes() -> bytes:
    """The network as a serialized ONNX model (deterministic bytes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2 = weights()
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, CIRCUIT_NAME,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, INPUTS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUTPUTS])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fabstir")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def circuit_id(data_sha256: str) -> str:
    """A short id of the circuit (graph, run arguments, and the digest of its SRS and settings files): its keys
    are built once per id."""
    digest = hashlib.sha256(onnx_model_bytes())
    digest.update(json.dumps(RUN_ARGS, sort_keys=True).encode())
    digest.update(data_sha256.encode())
    return digest.hexdigest()[:16]
