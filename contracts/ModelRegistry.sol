// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Ownable} from "./lib/Ownable.sol";

/// @title ModelRegistry
/// @notice The owner-curated list of models that hosts may serve. A model is identified by
///         keccak256(repo ‖ "/" ‖ fileName) and pinned to the SHA-256 of its file.
/// @dev Only the owner-trusted tier (1) exists for now; community proposals and voting are not implemented.
contract ModelRegistry is Ownable {
    uint256 public constant TIER_TRUSTED = 1;

    struct Model {
        string repo;
        string fileName;
        bytes32 sha256Hash;
        uint256 approvalTier;
        bool active;
        uint256 timestamp;
    }

    mapping(bytes32 => Model) public models;
    /// @notice Every model id ever added, in the order added.
    bytes32[] public modelList;

    event ModelAdded(bytes32 indexed modelId, string repo, string fileName, uint256 tier);
    event ModelDeactivated(bytes32 indexed modelId);
    event ModelReactivated(bytes32 indexed modelId);

    /// @notice The id of the model stored as `fileName` in the repository `repo`.
    function getModelId(string memory repo, string memory fileName) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(repo, "/", fileName));
    }

    /// @notice Adds an owner-trusted (tier 1), active model. Reverts if the model already exists.
    function addTrustedModel(string calldata repo, string calldata fileName, bytes32 sha256Hash) external onlyOwner {
        require(bytes(repo).length > 0 && bytes(fileName).length > 0, "Empty repo or file name");
        require(sha256Hash != bytes32(0), "Zero model hash");
        bytes32 modelId = getModelId(repo, fileName);
        require(models[modelId].timestamp == 0, "Model already exists");
        models[modelId] = Model(repo, fileName, sha256Hash, TIER_TRUSTED, true, block.timestamp);
        modelList.push(modelId);
        emit ModelAdded(modelId, repo, fileName, TIER_TRUSTED);
    }

    /// @notice Stops new registrations and sessions for a model. Hosts already listing it keep it listed.
    function deactivateModel(bytes32 modelId) external onlyOwner {
        Model storage model = _existing(modelId);
        require(model.active, "Model not active");
        model.active = false;
        emit ModelDeactivated(modelId);
    }

    function reactivateModel(bytes32 modelId) external onlyOwner {
        Model storage model = _existing(modelId);
        require(!model.active, "Model already active");
        model.active = true;
        emit ModelReactivated(modelId);
    }

    /// @notice True when the model exists and is active.
    function isModelApproved(bytes32 modelId) external view returns (bool) {
        return models[modelId].active;
    }

    /// @notice The stored record; reverts with "Model not found" for an unknown id.
    function getModel(bytes32 modelId) external view returns (Model memory) {
        return _existing(modelId);
    }

    /// @notice The SHA-256 of the model file (zero for an unknown id).
    function getModelHash(bytes32 modelId) external view returns (bytes32) {
        return models[modelId].sha256Hash;
    }

    /// @notice Every model ever added, active or not, in the order added.
    function getAllModels() external view returns (bytes32[] memory) {
        return modelList;
    }

    function _existing(bytes32 modelId) private view returns (Model storage model) {
        model = models[modelId];
        require(model.timestamp != 0, "Model not found");
    }
}
