// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IProofVerifier} from "./IProofVerifier.sol";
import {Ownable} from "./lib/Ownable.sol";

/// @title ProofSystem
/// @notice Records every checkpoint proof hash once, and is the seam where real verification plugs in.
/// @dev With no verifier set, proofs are accepted optimistically (what the public contracts do in
///      practice). Only authorized callers (the marketplace) may record, so a third party cannot burn a
///      host's proof hash by front-running it.
///      Two verifier slots: `verifier` checks every claim as it is recorded (claims carry no proof bytes
///      today, so a SNARK verifier there makes every claim without a proof revert), and `checkpointVerifier`
///      checks the proofs hosts submit for checkpoints they claimed (`verifyCheckpoint`, issue 14 P3): a
///      SNARK bound to the checkpoint's usage commitment, verified on chain.
contract ProofSystem is Ownable {
    /// @dev One storage slot per proof; the tokens and model are in the ProofRecorded event and the marketplace.
    struct ProofRecord {
        address prover;
        bool verified;
        uint64 timestamp;
    }

    IProofVerifier public verifier;
    mapping(address => bool) public authorizedCallers;
    mapping(bytes32 => ProofRecord) public proofs;
    /// @notice Checks the proofs submitted for claimed checkpoints (zero: none are taken).
    IProofVerifier public checkpointVerifier;
    /// @notice Usage commitments whose checkpoint proof verified (each is proven once).
    mapping(bytes32 => bool) public provenCheckpoints;

    /// @notice A proof hash was recorded (named as on the public ProofSystem; `verified` in `proofs` says
    ///         whether a verifier checked it beyond the host's signature).
    event ProofVerified(bytes32 indexed proofHash, address indexed prover, uint256 tokens);
    event VerifierUpdated(address indexed verifier);
    event AuthorizedCallerUpdated(address indexed caller, bool authorized);
    event CheckpointVerifierUpdated(address indexed verifier);
    /// @notice A checkpoint proof verified against `commitment` (the marketplace's usage digest).
    event CheckpointProofVerified(bytes32 indexed commitment, address indexed prover, uint256 tokens);

    function setAuthorizedCaller(address caller, bool authorized) external onlyOwner {
        require(caller != address(0), "Zero address");
        authorizedCallers[caller] = authorized;
        emit AuthorizedCallerUpdated(caller, authorized);
    }

    /// @notice Sets the contract that checks each proof; the zero address goes back to optimistic mode.
    function setVerifier(address newVerifier) external onlyOwner {
        verifier = IProofVerifier(newVerifier);
        emit VerifierUpdated(newVerifier);
    }

    /// @notice Sets the contract that checks submitted checkpoint proofs; zero stops taking them.
    function setCheckpointVerifier(address newVerifier) external onlyOwner {
        checkpointVerifier = IProofVerifier(newVerifier);
        emit CheckpointVerifierUpdated(newVerifier);
    }

    /// @notice Verifies a proof for a claimed checkpoint whose usage commitment is `commitment` (computed by the
    ///         marketplace from its chain, its address, the job, the cumulative tokens and the transcript hash).
    ///         Authorized callers only. Reverts "Proof rejected" unless the checkpoint verifier accepts it.
    function verifyCheckpoint(bytes32 commitment, address prover, uint256 tokens, bytes32 modelId, bytes calldata proof)
        external
    {
        require(authorizedCallers[msg.sender], "Not authorized");
        IProofVerifier current = checkpointVerifier;
        require(address(current) != address(0), "No checkpoint verifier");
        require(tokens > 0, "Zero tokens");
        require(!provenCheckpoints[commitment], "Checkpoint already proven");
        provenCheckpoints[commitment] = true;
        bool valid;
        try current.verify(commitment, prover, tokens, modelId, proof) returns (bool result) {
            valid = result;
        } catch {
            valid = false;
        }
        require(valid, "Proof rejected");
        emit CheckpointProofVerified(commitment, prover, tokens);
    }

    /// @notice Checks and records one checkpoint proof. Authorized callers only.
    /// @return verified True when a verifier checked the proof; false when it was accepted optimistically
    ///         (no verifier set). A rejected or reused proof reverts instead.
    function recordProof(bytes32 proofHash, address prover, uint256 tokens, bytes32 modelId, bytes calldata proof)
        external
        returns (bool verified)
    {
        require(authorizedCallers[msg.sender], "Not authorized");
        require(proofHash != bytes32(0), "Zero proof hash");
        require(prover != address(0), "Zero prover");
        require(tokens > 0, "Zero tokens");
        require(proofs[proofHash].timestamp == 0, "Proof already used");

        // Mark the hash used before calling out, so a verifier cannot re-enter with the same hash.
        ProofRecord storage record = proofs[proofHash];
        record.prover = prover;
        record.timestamp = uint64(block.timestamp);

        IProofVerifier current = verifier;
        if (address(current) != address(0)) {
            require(current.verify(proofHash, prover, tokens, modelId, proof), "Proof rejected");
            record.verified = true;
            verified = true;
        }
        emit ProofVerified(proofHash, prover, tokens);
    }

    /// @notice Whether `proofHash` was already used (the public ProofSystem's name for this view).
    function verifiedProofs(bytes32 proofHash) external view returns (bool) {
        return proofs[proofHash].timestamp != 0;
    }
}
