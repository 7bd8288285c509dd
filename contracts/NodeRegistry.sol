// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "./lib/IERC20.sol";
import {IModelRegistryView} from "./lib/IMarketplaceDeps.sol";
import {Ownable} from "./lib/Ownable.sol";
import {ReentrancyGuard} from "./lib/ReentrancyGuard.sol";
import {SafeTransfer} from "./lib/SafeTransfer.sol";

/// @title NodeRegistry
/// @notice Hosts stake the stake token, list the approved models they serve with their minimum prices, and
///         can switch themselves off (`setNodeActive(false)`) without giving up their registration.
/// @dev Two index structures, both with O(1) swap-and-pop removal: every registered node, and, per model,
///      every registered node that lists it. "Active" views filter those lists by the active flag, so turning
///      a node off or on costs one storage write. Prices use PRICE_PRECISION = 1000 (units per token x 1000).
///      A host may override its default prices per model (`setModelPricing`); `getModelPricing` applies the
///      override and falls back to the default. Names, signatures and events match the public registry's
///      wherever it has the same function or event.
///      Slashing: the owner names one slashing authority (`setSlashingAuthority`, as on the public registry; ours
///      wires it to the marketplace, whose substitution validator rules on reports). `slash` moves up to the
///      amount asked from a host's stake to the address given (ours: the depositor the host cheated).
contract NodeRegistry is Ownable, ReentrancyGuard {
    using SafeTransfer for IERC20;

    uint256 public constant MIN_PRICE_PER_TOKEN_NATIVE = 1;
    uint256 public constant MAX_PRICE_PER_TOKEN_NATIVE = 22_727_272_727_273_000;
    uint256 public constant MIN_PRICE_PER_TOKEN_STABLE = 1;
    uint256 public constant MAX_PRICE_PER_TOKEN_STABLE = 100_000_000;
    uint256 public constant MAX_MODELS_PER_NODE = 64;
    uint256 public constant PRICE_PRECISION = 1000;

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

    /// @notice The stake token (FAB on the public network).
    IERC20 public immutable fabToken;
    address public immutable modelRegistry;
    /// @notice The stake that `registerNode` pulls (a constant on the public registry, set at deployment here).
    uint256 public immutable MIN_STAKE; // solhint-disable-line var-name-mixedcase

    /// @notice A node's record; the public getter leaves out `supportedModels` (see getNodeFullInfo).
    mapping(address => Node) public nodes;
    /// @notice Per-model price overrides (0: the host's default applies), operator => model => price.
    mapping(address => mapping(bytes32 => uint256)) public modelPricingNative;
    mapping(address => mapping(bytes32 => uint256)) public modelPricingStable;
    address[] private _registered;
    mapping(address => uint256) private _registeredSlot; // index + 1; 0 = not registered
    mapping(bytes32 => address[]) private _modelNodes;
    mapping(bytes32 => mapping(address => uint256)) private _modelNodeSlot; // index + 1; 0 = not listed
    /// @notice The only address that may `slash` stakes (zero: none may).
    address public slashingAuthority;
    /// @notice Seconds an unregistered host's stake stays slashable before `withdrawUnbondedStake` pays it out
    ///         (zero: `unregisterNode` pays it at once, as the public registry does). Owner-set; at least the
    ///         marketplace's substitution report window, so a caught host cannot leave with its stake first.
    uint256 public stakeUnbondingPeriod = 2 days;

    /// @notice Stake an unregistered host has not withdrawn yet, and when it may.
    struct UnbondingStake {
        uint256 amount;
        uint256 releaseTime;
    }

    mapping(address => UnbondingStake) public unbondingStake;

    event NodeRegistered(address indexed operator, uint256 stakedAmount, string metadata, bytes32[] models);
    event NodeUnregistered(address indexed operator, uint256 returnedAmount);
    event MetadataUpdated(address indexed operator, string metadata);
    event ApiUrlUpdated(address indexed operator, string apiUrl);
    event ModelsUpdated(address indexed operator, bytes32[] models);
    /// @notice A default price changed (native or stable: read the node to see which).
    event PricingUpdated(address indexed operator, uint256 newMinPrice);
    event ModelPricingUpdated(
        address indexed operator, bytes32 indexed modelId, uint256 nativePrice, uint256 stablePrice
    );
    event NodeActiveChanged(address indexed operator, bool active);
    event StakeAdded(address indexed operator, uint256 amount, uint256 total);
    event SlashingAuthorityUpdated(address indexed previousAuthority, address indexed newAuthority);
    /// @notice `amount` of `operator`'s stake went to `to`; `remainingStake` is what it has left.
    event StakeSlashed(address indexed operator, uint256 amount, uint256 remainingStake, address indexed to);
    event StakeUnbonding(address indexed operator, uint256 amount, uint256 releaseTime);
    event UnbondedStakeWithdrawn(address indexed operator, uint256 amount);
    event StakeUnbondingPeriodUpdated(uint256 period);

    modifier onlyRegistered() {
        require(_registeredSlot[msg.sender] != 0, "Not registered");
        _;
    }

    constructor(address stakeToken_, address modelRegistry_, uint256 minStake_) {
        require(stakeToken_ != address(0) && modelRegistry_ != address(0), "Zero address");
        require(minStake_ > 0, "Zero minimum stake");
        fabToken = IERC20(stakeToken_);
        modelRegistry = modelRegistry_;
        MIN_STAKE = minStake_;
    }

    // ------------------------------------------------------------------ registration and stake

    /// @notice Registers the caller as an active host, pulling exactly `MIN_STAKE` of the stake token.
    /// @dev The caller must first approve this contract for `MIN_STAKE` on the stake token.
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

        Node storage node = nodes[msg.sender];
        node.operator = msg.sender;
        node.stakedAmount = MIN_STAKE;
        node.active = true;
        node.metadata = metadata;
        node.apiUrl = apiUrl;
        node.minPricePerTokenNative = minPricePerTokenNative;
        node.minPricePerTokenStable = minPricePerTokenStable;
        _registered.push(msg.sender);
        _registeredSlot[msg.sender] = _registered.length;
        _listModels(node, modelIds);

        fabToken.safeTransferFrom(msg.sender, address(this), MIN_STAKE);
        emit NodeRegistered(msg.sender, MIN_STAKE, metadata, modelIds);
    }

    /// @notice Adds `amount` of the stake token to the caller's stake (approve first).
    function stake(uint256 amount) external nonReentrant onlyRegistered {
        require(amount > 0, "Zero amount");
        Node storage node = nodes[msg.sender];
        node.stakedAmount += amount;
        fabToken.safeTransferFrom(msg.sender, address(this), amount);
        emit StakeAdded(msg.sender, amount, node.stakedAmount);
    }

    /// @notice Moves up to `amount` of `host`'s stake to `to` (all of it when it has less) and returns what moved:
    ///         first from its registered stake, then from stake still unbonding after it unregistered; 0 when it
    ///         has none. The slashing authority only. A registered host stays registered.
    function slash(address host, uint256 amount, address to) external nonReentrant returns (uint256 slashed) {
        require(msg.sender == slashingAuthority, "Not slashing authority");
        require(to != address(0), "Zero address");
        Node storage node = nodes[host];
        uint256 fromStake = amount < node.stakedAmount ? amount : node.stakedAmount;
        node.stakedAmount -= fromStake;
        UnbondingStake storage unbonding = unbondingStake[host];
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < unbonding.amount ? rest : unbonding.amount;
        unbonding.amount -= fromUnbonding;
        slashed = fromStake + fromUnbonding;
        if (slashed == 0) return 0;
        fabToken.safeTransfer(to, slashed);
        emit StakeSlashed(host, slashed, node.stakedAmount, to);
    }

    /// @notice Names the one address that may `slash` (zero: none). Owner only.
    function setSlashingAuthority(address newAuthority) external onlyOwner {
        emit SlashingAuthorityUpdated(slashingAuthority, newAuthority);
        slashingAuthority = newAuthority;
    }

    /// @notice How long an unregistered host's stake stays slashable (see stakeUnbondingPeriod). Owner only.
    function setStakeUnbondingPeriod(uint256 period) external onlyOwner {
        stakeUnbondingPeriod = period;
        emit StakeUnbondingPeriodUpdated(period);
    }

    /// @notice Removes the caller from every list and releases its whole stake: paid at once when
    ///         `stakeUnbondingPeriod` is zero, else after it (`withdrawUnbondedStake`), slashable until then.
    /// @dev Open sessions are not checked: they still settle, since the marketplace does not need the stake.
    function unregisterNode() external nonReentrant onlyRegistered {
        Node storage node = nodes[msg.sender];
        uint256 returned = node.stakedAmount;
        _clearModelPrices(msg.sender, node.supportedModels);
        _unlistModels(node);
        _removeRegistered(msg.sender);
        delete nodes[msg.sender];

        emit NodeUnregistered(msg.sender, returned);
        if (stakeUnbondingPeriod == 0) {
            fabToken.safeTransfer(msg.sender, returned);
        } else {
            UnbondingStake storage unbonding = unbondingStake[msg.sender];
            unbonding.amount += returned;
            unbonding.releaseTime = block.timestamp + stakeUnbondingPeriod;
            emit StakeUnbonding(msg.sender, unbonding.amount, unbonding.releaseTime);
        }
    }

    /// @notice Pays out the caller's unbonded stake once its release time has passed; returns the amount.
    function withdrawUnbondedStake() external nonReentrant returns (uint256 amount) {
        UnbondingStake storage unbonding = unbondingStake[msg.sender];
        amount = unbonding.amount;
        require(amount > 0, "Nothing unbonding");
        require(block.timestamp >= unbonding.releaseTime, "Stake still unbonding");
        delete unbondingStake[msg.sender];
        fabToken.safeTransfer(msg.sender, amount);
        emit UnbondedStakeWithdrawn(msg.sender, amount);
    }

    /// @notice Turns the caller's node on or off. An inactive node keeps its registration and stake, is
    ///         left out of getAllActiveNodes/getNodesForModel, and cannot be given new sessions.
    function setNodeActive(bool active) external onlyRegistered {
        Node storage node = nodes[msg.sender];
        require(node.active != active, active ? "Already active" : "Already inactive");
        node.active = active;
        emit NodeActiveChanged(msg.sender, active);
    }

    // ------------------------------------------------------------------ updates

    function updateMetadata(string calldata metadata) external onlyRegistered {
        require(bytes(metadata).length > 0, "Empty metadata");
        nodes[msg.sender].metadata = metadata;
        emit MetadataUpdated(msg.sender, metadata);
    }

    function updateApiUrl(string calldata apiUrl) external onlyRegistered {
        require(bytes(apiUrl).length > 0, "Empty API URL");
        nodes[msg.sender].apiUrl = apiUrl;
        emit ApiUrlUpdated(msg.sender, apiUrl);
    }

    /// @notice Replaces the caller's model list; every model must be approved now.
    /// @dev Price overrides of models that leave the list are cleared; those of models that stay are kept.
    function updateSupportedModels(bytes32[] calldata modelIds) external onlyRegistered {
        Node storage node = nodes[msg.sender];
        bytes32[] memory previous = node.supportedModels;
        _unlistModels(node);
        _listModels(node, modelIds);
        for (uint256 i = 0; i < previous.length; ++i) {
            if (_modelNodeSlot[previous[i]][msg.sender] == 0) _clearModelPrice(msg.sender, previous[i]);
        }
        emit ModelsUpdated(msg.sender, modelIds);
    }

    function updatePricingNative(uint256 price) external onlyRegistered {
        _checkNativePrice(price);
        Node storage node = nodes[msg.sender];
        node.minPricePerTokenNative = price;
        emit PricingUpdated(msg.sender, price);
    }

    function updatePricingStable(uint256 price) external onlyRegistered {
        _checkStablePrice(price);
        Node storage node = nodes[msg.sender];
        node.minPricePerTokenStable = price;
        emit PricingUpdated(msg.sender, price);
    }

    /// @notice Overrides the caller's default prices for one model it lists; 0 keeps the default for that
    ///         payment kind.
    function setModelPricing(bytes32 modelId, uint256 nativePrice, uint256 stablePrice) external onlyRegistered {
        require(_modelNodeSlot[modelId][msg.sender] != 0, "Model not supported");
        if (nativePrice != 0) _checkNativePrice(nativePrice);
        if (stablePrice != 0) _checkStablePrice(stablePrice);
        modelPricingNative[msg.sender][modelId] = nativePrice;
        modelPricingStable[msg.sender][modelId] = stablePrice;
        emit ModelPricingUpdated(msg.sender, modelId, nativePrice, stablePrice);
    }

    /// @notice Removes the caller's price override for `modelId`; its default prices apply again.
    function clearModelPricing(bytes32 modelId) external onlyRegistered {
        _clearModelPrice(msg.sender, modelId);
    }

    // ------------------------------------------------------------------ views

    function isRegisteredNode(address operator) public view returns (bool) {
        return _registeredSlot[operator] != 0;
    }

    /// @notice Registered and switched on.
    function isActiveNode(address operator) public view returns (bool) {
        return _registeredSlot[operator] != 0 && nodes[operator].active;
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
        Node storage node = nodes[host];
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
        return nodes[operator].apiUrl;
    }

    function getNodeModels(address operator) external view returns (bytes32[] memory) {
        return nodes[operator].supportedModels;
    }

    /// @notice The host's default minimum price: native for token 0, stable for any ERC-20. Zero if unregistered.
    function getNodePricing(address host, address token) public view returns (uint256) {
        Node storage node = nodes[host];
        return token == address(0) ? node.minPricePerTokenNative : node.minPricePerTokenStable;
    }

    /// @notice The host's minimum price for sessions on `modelId`: its override, else its default.
    function getModelPricing(address host, bytes32 modelId, address token) external view returns (uint256) {
        uint256 price = token == address(0) ? modelPricingNative[host][modelId] : modelPricingStable[host][modelId];
        return price != 0 ? price : getNodePricing(host, token);
    }

    /// @notice Every model the host lists with its effective prices (override or default), in list order.
    function getHostModelPrices(address operator)
        external
        view
        returns (bytes32[] memory modelIds, uint256[] memory nativePrices, uint256[] memory stablePrices)
    {
        Node storage node = nodes[operator];
        modelIds = node.supportedModels;
        nativePrices = new uint256[](modelIds.length);
        stablePrices = new uint256[](modelIds.length);
        for (uint256 i = 0; i < modelIds.length; ++i) {
            uint256 native = modelPricingNative[operator][modelIds[i]];
            uint256 stable = modelPricingStable[operator][modelIds[i]];
            nativePrices[i] = native != 0 ? native : node.minPricePerTokenNative;
            stablePrices[i] = stable != 0 ? stable : node.minPricePerTokenStable;
        }
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

    function _clearModelPrice(address operator, bytes32 modelId) private {
        if (modelPricingNative[operator][modelId] == 0 && modelPricingStable[operator][modelId] == 0) return;
        delete modelPricingNative[operator][modelId];
        delete modelPricingStable[operator][modelId];
        emit ModelPricingUpdated(operator, modelId, 0, 0);
    }

    function _clearModelPrices(address operator, bytes32[] storage modelIds) private {
        for (uint256 i = 0; i < modelIds.length; ++i) {
            _clearModelPrice(operator, modelIds[i]);
        }
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
            if (nodes[list[i]].active) active[count++] = list[i];
        }
        assembly ("memory-safe") {
            mstore(active, count) // shrink to the number of active entries
        }
    }
}
