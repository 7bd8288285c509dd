// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

// Test doubles for the checkpoint-form probe (tests/chain/test_proof_forms.py). Never shipped.

/// @notice Speaks only the five-argument, unsigned `submitProofOfWork` that some public deployments use;
///         records every call in an event so a test can check what the node sent.
contract UnsignedProofSink {
    event Submitted(
        uint256 indexed jobId,
        address indexed sender,
        uint256 tokensClaimed,
        bytes32 proofHash,
        string proofCID,
        string deltaCID
    );

    function submitProofOfWork(
        uint256 jobId,
        uint256 tokensClaimed,
        bytes32 proofHash,
        string calldata proofCID,
        string calldata deltaCID
    ) external {
        emit Submitted(jobId, msg.sender, tokensClaimed, proofHash, proofCID, deltaCID);
    }
}

/// @notice A bare ERC-1967 proxy (the layout of the public network's UUPS proxies): the implementation address
///         sits in the standard slot and every call is delegated to it.
contract StubProxy {
    bytes32 private constant IMPLEMENTATION_SLOT = 0x360894a13ba1a3210667c828492db98dca3e2076cc3735a920a3ca505d382bbc;

    constructor(address implementation) {
        assembly ("memory-safe") {
            sstore(IMPLEMENTATION_SLOT, implementation)
        }
    }

    fallback() external {
        assembly {
            let implementation := sload(IMPLEMENTATION_SLOT)
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), implementation, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }
}
