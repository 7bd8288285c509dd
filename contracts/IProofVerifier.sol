// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title IProofVerifier
/// @notice What a real checkpoint-proof verifier implements (for example a contract wrapping a SNARK
///         verifier). ProofSystem calls it for every checkpoint once the owner sets one with setVerifier.
interface IProofVerifier {
    /// @param proofHash The hash the host committed to on-chain (SHA-256 of the off-chain proof).
    /// @param prover The host that submitted the checkpoint.
    /// @param tokens The tokens the checkpoint claims.
    /// @param modelId The session's model (zero for sessions opened without one).
    /// @param proof Proof bytes; empty while the marketplace stores proofs off-chain.
    /// @return valid False rejects the checkpoint.
    function verify(bytes32 proofHash, address prover, uint256 tokens, bytes32 modelId, bytes calldata proof)
        external
        returns (bool valid);
}
