// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IProofVerifier} from "./IProofVerifier.sol";

/// @notice The EZKL-generated Halo2 verifier's entry point (contracts/Halo2Verifier.sol).
interface IHalo2Verifier {
    function verifyProof(bytes calldata proof, uint256[] calldata instances) external view returns (bool);
}

/// @title CheckpointProofVerifier
/// @notice Checks a checkpoint proof of the circuit `fabstir-checkpoint-v1` (src/fabstir/zk/circuit.py) with the
///         Halo2 verifier, on public inputs this contract derives itself from what the ProofSystem passes.
/// @dev The circuit's 40 public values, in order: the 32 bytes of `proofHash` (the marketplace's usage
///      commitment `usageDigest(jobId, cumulativeTokens, transcriptHash)`), the 4 little-endian bytes of
///      `tokens`, then the 4 outputs of the circuit's network (field elements, given by the prover). So a proof
///      made for another job, count, transcript, chain or marketplace fails here. `proof` is
///      `abi.encode(bytes snark, uint256[] outputs)`; anything else is refused.
contract CheckpointProofVerifier is IProofVerifier {
    uint256 public constant COMMITMENT_BYTES = 32;
    uint256 public constant TOKEN_BYTES = 4;
    uint256 public constant OUTPUTS = 4;
    /// @notice The circuit whose verifying key `halo2` holds.
    string public constant CIRCUIT = "fabstir-checkpoint-v1";

    IHalo2Verifier public immutable halo2;

    constructor(address halo2Verifier) {
        require(halo2Verifier.code.length > 0, "No verifier code");
        halo2 = IHalo2Verifier(halo2Verifier);
    }

    /// @inheritdoc IProofVerifier
    function verify(bytes32 proofHash, address, uint256 tokens, bytes32, bytes calldata proof)
        external
        view
        returns (bool valid)
    {
        if (proof.length < 128 || tokens >> (8 * TOKEN_BYTES) != 0) return false;
        (bytes memory snark, uint256[] memory outputs) = abi.decode(proof, (bytes, uint256[]));
        if (outputs.length != OUTPUTS) return false;
        uint256[] memory instances = new uint256[](COMMITMENT_BYTES + TOKEN_BYTES + OUTPUTS);
        for (uint256 i = 0; i < COMMITMENT_BYTES; ++i) {
            instances[i] = uint8(proofHash[i]);
        }
        for (uint256 i = 0; i < TOKEN_BYTES; ++i) {
            instances[COMMITMENT_BYTES + i] = (tokens >> (8 * i)) & 0xff;
        }
        for (uint256 i = 0; i < OUTPUTS; ++i) {
            instances[COMMITMENT_BYTES + TOKEN_BYTES + i] = outputs[i];
        }
        (bool ok, bytes memory result) =
            address(halo2).staticcall(abi.encodeCall(IHalo2Verifier.verifyProof, (snark, instances)));
        return ok && result.length == 32 && abi.decode(result, (bool));
    }
}
