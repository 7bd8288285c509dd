// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "./lib/IERC20.sol";
import {IModelRegistryView} from "./lib/IMarketplaceDeps.sol";
import {ReentrancyGuard} from "./lib/ReentrancyGuard.sol";
import {SafeTransfer} from "./lib/SafeTransfer.sol";

/// @title NodeRegistry
/// @notice Hosts stake the stake token, list the approved models they serve with their minimum prices, and
///         can switch themselves off (`setNodeActive(false)`) without giving up their registration.
/// @dev Two index structures, both with O(1) swap-and-pop removal: every registered node, and, per model,
///      every registered node that lists it. "Active" views filter those lists by the active flag, so turning
///      a node off or on costs one storage write. Prices use PRICE_PRECISION = 1000 (units per token x 1000).
contract NodeRegistry is ReentrancyGuard {
    using SafeTransfer for IERC20;

    uint256 public constant MIN_PRICE_PER_TOKEN_NATIVE = 1;
    uint256 public constant MAX_PRICE_PER_TOKEN_NATIVE = 22_727_272_727_273_000;
    uint256 public constant MIN_PRICE_PER_TOKEN_STABLE = 1;
    uint256 public constant MAX_PRICE_PER_TOKEN_STABLE = 100_000_000;
    uint256 public constant MAX_MODELS_PER_NODE = 64;

    struct Node {
        address operator;
        uint256 stakedAmount;
        bool active;
        string metadata;
        string apiUrl;
        bytes32[] supportedModels;
        uint256 minPricePerTokenNative;
        uint256 minPricePerTokenStable;
    }

    IERC20 public immutable stakeToken;
    address public immutable modelRegistry;
    uint256 public immutable minStake;

    mapping(address => Node) private _nodes;
    address[] private _registered;
    mapping(address => uint256) private _registeredSlot; // index + 1; 0 = not registered
    mapping(bytes32 => address[]) private _modelNodes;
    mapping(bytes32 => mapping(address => uint256)) private _modelNodeSlot; // index + 1; 0 = not listed

    event NodeRegistered(address indexed operator, uint256 stakedAmount, string metadata, bytes32[] models);
    event NodeUnregistered(address indexed operator, uint256 returnedAmount);
    event MetadataUpdated(address indexed operator, string metadata);
    event ApiUrlUpdated(address indexed operator, string apiUrl);
    event ModelsUpdated(address indexed operator, bytes32[] models);
    event PricingUpdated(address indexed operator, uint256 nativePrice, uint256 stablePrice);
    event NodeActiveChanged(address indexed operator, bool active);
    event StakeAdded(address indexed operator, uint256 amount, uint256 total);

    modifier onlyRegistered() {
        require(_registeredSlot[msg.sender] != 0, "Not registered");
        _;
    }

    constructor(address stakeToken_, address modelRegistry_, uint256 minStake_) {
        require(stakeToken_ != address(0) && modelRegistry_ != address(0), "Zero address");
        require(minStake_ > 0, "Zero minimum stake");
        stakeToken = IERC20(stakeToken_);
        modelRegistry = modelRegistry_;
        minStake = minStake_;
    }

    // ------------------------------------------------------------------ registration and stake

    /// @notice Registers the caller as an active host, pulling exactly `minStake` of the stake token.
    /// @dev The caller must first approve this contract for `minStake` on the stake token.
    function registerNode(
        string calldata metadata,
        string calldata apiUrl,
        bytes32[] calldata modelIds,
        uint256 minPricePerTokenNative,
        uint256 minPricePerTokenStable
    ) external nonReentrant {
        require(_registeredSlot[msg.sender] == 0, "Already registered");
        require(bytes(metadata).length > 0, "Empty metadata");
        require(bytes(apiUrl).length > 0, "Empty API URL");
        _checkNativePrice(minPricePerTokenNative);
        _checkStablePrice(minPricePerTokenStable);

        Node storage node = _nodes[msg.sender];
        node.operator = msg.sender;
        node.stakedAmount = minStake;
        node.active = true;
        node.metadata = metadata;
        node.apiUrl = apiUrl;
        node.minPricePerTokenNative = minPricePerTokenNative;
        node.minPricePerTokenStable = minPricePerTokenStable;
        _registered.push(msg.sender);
        _registeredSlot[msg.sender] = _registered.length;
        _listModels(node, modelIds);

        stakeToken.safeTransferFrom(msg.sender, address(this), minStake);
        emit NodeRegistered(msg.sender, minStake, metadata, modelIds);
    }

    /// @notice Adds `amount` of the stake token to the caller's stake (approve first).
    function stake(uint256 amount) external nonReentrant onlyRegistered {
        require(amount > 0, "Zero amount");
        Node storage node = _nodes[msg.sender];
        node.stakedAmount += amount;
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
        emit StakeAdded(msg.sender, amount, node.stakedAmount);
    }

    /// @notice Removes the caller from every list and returns the whole stake.
    /// @dev Open sessions are not checked: they still settle, since the marketplace does not need the stake.
    function unregisterNode() external nonReentrant onlyRegistered {
        Node storage node = _nodes[msg.sender];
        uint256 returned = node.stakedAmount;
        _unlistModels(node);
        _removeRegistered(msg.sender);
        delete _nodes[msg.sender];

        stakeToken.safeTransfer(msg.sender, returned);
        emit NodeUnregistered(msg.sender, returned);
    }

    /// @notice Turns the caller's node on or off. An inactive node keeps its registration and stake, is
    ///         left out of getAllActiveNodes/getNodesForModel, and cannot be given new sessions.
    function setNodeActive(bool active) external onlyRegistered {
        Node storage node = _nodes[msg.sender];
        require(node.active != active, active ? "Already active" : "Already inactive");
        node.active = active;
        emit NodeActiveChanged(msg.sender, active);
    }

    // ------------------------------------------------------------------ updates

    function updateMetadata(string calldata metadata) external onlyRegistered {
        require(bytes(metadata).length > 0, "Empty metadata");
        _nodes[msg.sender].metadata = metadata;
        emit MetadataUpdated(msg.sender, metadata);
    }

    function updateApiUrl(string calldata apiUrl) external onlyRegistered {
        require(bytes(apiUrl).length > 0, "Empty API URL");
        _nodes[msg.sender].apiUrl = apiUrl;
        emit ApiUrlUpdated(msg.sender, apiUrl);
    }

    /// @notice Replaces the caller's model list; every model must be approved now.
    function updateSupportedModels(bytes32[] calldata modelIds) external onlyRegistered {
        Node storage node = _nodes[msg.sender];
        _unlistModels(node);
        _listModels(node, modelIds);
        emit ModelsUpdated(msg.sender, modelIds);
    }

    function updatePricingNative(uint256 price) external onlyRegistered {
        _checkNativePrice(price);
        Node storage node = _nodes[msg.sender];
        node.minPricePerTokenNative = price;
        emit PricingUpdated(msg.sender, price, node.minPricePerTokenStable);
    }

    function updatePricingStable(uint256 price) external onlyRegistered {
        _checkStablePrice(price);
        Node storage node = _nodes[msg.sender];
        node.minPricePerTokenStable = price;
        emit PricingUpdated(msg.sender, node.minPricePerTokenNative, price);
    }

    // ------------------------------------------------------------------ views

    function isRegisteredNode(address operator) public view returns (bool) {
        return _registeredSlot[operator] != 0;
    }

    /// @notice Registered and switched on.
    function isActiveNode(address operator) public view returns (bool) {
        return _registeredSlot[operator] != 0 && _nodes[operator].active;
    }

    /// @notice Every registered node, active or not, in no particular order.
    function getAllRegisteredNodes() external view returns (address[] memory) {
        return _registered;
    }

    /// @notice Every registered node that is switched on.
    function getAllActiveNodes() external view returns (address[] memory) {
        return _filterActive(_registered);
    }

    /// @notice The active nodes that list `modelId`.
    function getNodesForModel(bytes32 modelId) external view returns (address[] memory) {
        return _filterActive(_modelNodes[modelId]);
    }

    function getNodeFullInfo(address host)
        external
        view
        returns (
            address operator,
            uint256 stakedAmount,
            bool active,
            string memory metadata,
            string memory apiUrl,
            bytes32[] memory supportedModels,
            uint256 minPricePerTokenNative,
            uint256 minPricePerTokenStable
        )
    {
        Node storage node = _nodes[host];
        return (
            node.operator,
            node.stakedAmount,
            node.active,
            node.metadata,
            node.apiUrl,
            node.supportedModels,
            node.minPricePerTokenNative,
            node.minPricePerTokenStable
        );
    }

    function getNodeApiUrl(address operator) external view returns (string memory) {
        return _nodes[operator].apiUrl;
    }

    function getNodeMetadata(address operator) external view returns (string memory) {
        return _nodes[operator].metadata;
    }

    function getNodeStake(address operator) external view returns (uint256) {
        return _nodes[operator].stakedAmount;
    }

    function getNodeModels(address operator) external view returns (bytes32[] memory) {
        return _nodes[operator].supportedModels;
    }

    /// @notice The host's minimum price: native for token 0, stable for any ERC-20. Zero if unregistered.
    function getNodePricing(address host, address token) external view returns (uint256) {
        Node storage node = _nodes[host];
        return token == address(0) ? node.minPricePerTokenNative : node.minPricePerTokenStable;
    }

    function nodeSupportsModel(address operator, bytes32 modelId) external view returns (bool) {
        return _modelNodeSlot[modelId][operator] != 0;
    }

    // ------------------------------------------------------------------ internals

    function _checkNativePrice(uint256 price) private pure {
        require(
            price >= MIN_PRICE_PER_TOKEN_NATIVE && price <= MAX_PRICE_PER_TOKEN_NATIVE, "Native price out of range"
        );
    }

    function _checkStablePrice(uint256 price) private pure {
        require(
            price >= MIN_PRICE_PER_TOKEN_STABLE && price <= MAX_PRICE_PER_TOKEN_STABLE, "Stable price out of range"
        );
    }

    function _listModels(Node storage node, bytes32[] calldata modelIds) private {
        require(modelIds.length > 0, "No models");
        require(modelIds.length <= MAX_MODELS_PER_NODE, "Too many models");
        IModelRegistryView registry = IModelRegistryView(modelRegistry);
        address operator = node.operator;
        for (uint256 i = 0; i < modelIds.length; ++i) {
            bytes32 modelId = modelIds[i];
            require(registry.isModelApproved(modelId), "Model not approved");
            require(_modelNodeSlot[modelId][operator] == 0, "Duplicate model");
            _modelNodes[modelId].push(operator);
            _modelNodeSlot[modelId][operator] = _modelNodes[modelId].length;
        }
        node.supportedModels = modelIds;
    }

    function _unlistModels(Node storage node) private {
        bytes32[] storage models = node.supportedModels;
        address operator = node.operator;
        for (uint256 i = 0; i < models.length; ++i) {
            _removeFromModel(models[i], operator);
        }
        delete node.supportedModels;
    }

    function _removeFromModel(bytes32 modelId, address operator) private {
        address[] storage list = _modelNodes[modelId];
        uint256 index = _modelNodeSlot[modelId][operator] - 1;
        address last = list[list.length - 1];
        list[index] = last;
        _modelNodeSlot[modelId][last] = index + 1;
        list.pop();
        delete _modelNodeSlot[modelId][operator];
    }

    function _removeRegistered(address operator) private {
        uint256 index = _registeredSlot[operator] - 1;
        address last = _registered[_registered.length - 1];
        _registered[index] = last;
        _registeredSlot[last] = index + 1;
        _registered.pop();
        delete _registeredSlot[operator];
    }

    function _filterActive(address[] storage list) private view returns (address[] memory active) {
        active = new address[](list.length);
        uint256 count = 0;
        for (uint256 i = 0; i < list.length; ++i) {
            if (_nodes[list[i]].active) active[count++] = list[i];
        }
        assembly ("memory-safe") {
            mstore(active, count) // shrink to the number of active entries
        }
    }
}
