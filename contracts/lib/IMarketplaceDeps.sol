// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

// The narrow views of the other fabstir contracts that JobMarketplace calls. Each contract's full ABI lives
// in its own artifact; these interfaces exist only so the marketplace can be compiled against them.

interface IModelRegistryView {
    function isModelApproved(bytes32 modelId) external view returns (bool);
}

interface INodeRegistryView {
    function modelRegistry() external view returns (address);
    function isRegisteredNode(address operator) external view returns (bool);
    function isActiveNode(address operator) external view returns (bool);
    function getNodePricing(address host, address token) external view returns (uint256);
    function getModelPricing(address host, bytes32 modelId, address token) external view returns (uint256);
    function nodeSupportsModel(address operator, bytes32 modelId) external view returns (bool);
    // solhint-disable-next-line func-name-mixedcase
    function MIN_STAKE() external view returns (uint256);
    function slash(address host, uint256 amount, address to) external returns (uint256 slashed);
}

interface IHostEarningsCredit {
    function creditEarnings(address host, uint256 amount, address token) external;
}

interface IProofRecorder {
    function recordProof(bytes32 proofHash, address prover, uint256 tokens, bytes32 modelId, bytes calldata proof)
        external
        returns (bool verified);
    function verifyCheckpoint(bytes32 commitment, address prover, uint256 tokens, bytes32 modelId, bytes calldata proof)
        external;
}
