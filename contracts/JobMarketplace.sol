// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "./lib/IERC20.sol";
import {
    IHostEarningsCredit, IModelRegistryView, INodeRegistryView, IProofRecorder
} from "./lib/IMarketplaceDeps.sol";
import {Ownable} from "./lib/Ownable.sol";
import {ReentrancyGuard} from "./lib/ReentrancyGuard.sol";
import {SafeTransfer} from "./lib/SafeTransfer.sol";

/// @title JobMarketplace
/// @notice Escrow for pay-per-token inference sessions between a depositor (user) and a registered host.
///
/// Theory of operation
///   1. The user opens a session with a deposit (ETH, or an accepted ERC-20) and a price per token at or above
///      the host's minimum (for a model session, the host's price for that model). Prices are "payment units
///      per token x PRICE_PRECISION (1000)".
///   2. The host submits checkpoints (`submitProofOfWork`), each claiming the tokens generated since the last
///      one and signed by the host (see below). A claim must be > 0 (the public contracts want at least
///      MIN_PROVEN_TOKENS; ours bill a session's last remainder too: `marketplaceFeatures`), within the rate
///      cap 2 x maxTokensPerSecond x seconds since the last checkpoint ("Excessive tokens claimed": too early, not
///      invalid), and keep the cumulative total within what the deposit covers. Every proof hash is recorded
///      once by ProofSystem (reuse reverts there).
///      Ours add consented billing (`FEATURE_USAGE_COUNTERSIGN`): the depositor countersigns, as it streams,
///      the cumulative tokens it received and a hash of their transcript (EIP-712 `UsageAck`, binding this
///      chain, this contract and the job). `submitCountersignedProof` carries that countersignature: it is
///      accepted at once and is final. A claim without it (`submitProofOfWork`) is provisional: until
///      `disputeWindow` seconds after the last checkpoint the depositor may answer it with its own, lower count
///      (`disputeUsage`, at or above what it countersigned), which then wins, and the session takes
///      countersigned claims only.
///   3. The session ends by completion (the depositor at any time, which accepts any provisional claim it did
///      not dispute; the host once `disputeWindow` seconds have passed since its last checkpoint, or at once
///      when the depositor countersigned everything claimed) or by timeout (anyone, after `maxDuration` seconds since the start
///      or `inactivityTimeout` seconds since the last checkpoint).
///   4. Settlement: payment = tokensUsed x price / 1000; the treasury fee (feeBasisPoints of payment) stays here
///      for the treasury; payment - fee goes to HostEarnings for the host; deposit - payment is pushed back to
///      the depositor. A refund that cannot be pushed is credited to the depositor instead (withdrawRefund /
///      withdrawTokenRefund), so a depositor can never block the host's settlement.
///   5. Substitution disputes (ours, `FEATURE_SUBSTITUTION_DISPUTES`): while a session is active, the validator the
///      owner appoints may report that its host served another model than the job names (`reportSubstitution`,
///      with the hash and location of the public evidence). The session closes with the host paid nothing, the
///      whole deposit goes back to the depositor, and half the registry's MIN_STAKE (at most the host's stake)
///      moves from the host's stake to the depositor.
contract JobMarketplace is Ownable, ReentrancyGuard {
    using SafeTransfer for IERC20;

    uint256 public constant PRICE_PRECISION = 1000;
    uint256 public constant MIN_PROVEN_TOKENS = 100;
    uint256 public constant MIN_DEPOSIT = 0.0001 ether;
    uint256 public constant MAX_DEPOSIT = 1000 ether;
    uint256 public constant MAX_SESSION_DURATION = 365 days;
    uint256 public constant MAX_DISPUTE_WINDOW = 7 days;
    uint256 public constant BASIS_POINTS = 10_000;
    /// @notice Gas given to the depositor when its ETH refund is pushed; beyond that it is credited instead.
    uint256 public constant REFUND_PUSH_GAS = 100_000;
    /// @dev Signatures with s above half the curve order are rejected (EIP-2), so each has one valid form.
    /// @notice Feature bit of `marketplaceFeatures`: any positive claim is accepted (no 100-token minimum), so a
    ///         session is billed exactly what was served, its last remainder included.
    uint256 public constant FEATURE_EXACT_BILLING = 1;
    /// @notice Feature bit of `marketplaceFeatures`: depositor-countersigned checkpoints and disputes of
    ///         provisional (not countersigned) claims.
    uint256 public constant FEATURE_USAGE_COUNTERSIGN = 2;
    /// @notice Feature bit of `marketplaceFeatures`: hosts may prove claimed checkpoints with a SNARK bound to
    ///         the checkpoint's usage commitment (`submitCheckpointProof`, verified by the ProofSystem).
    uint256 public constant FEATURE_CHECKPOINT_PROOFS = 4;
    /// @notice Feature bit of `marketplaceFeatures`: the substitution validator's reports (`reportSubstitution`)
    ///         refund the whole deposit and slash the host's stake.
    uint256 public constant FEATURE_SUBSTITUTION_DISPUTES = 8;
    /// @notice Stake slashed per upheld substitution report: this share of the registry's MIN_STAKE, in basis
    ///         points (capped at what the host has staked).
    uint256 public constant SUBSTITUTION_SLASH_BPS = 5000;
    /// @notice EIP-712 type of the depositor's countersignature of its usage.
    bytes32 public constant USAGE_TYPEHASH =
        keccak256("UsageAck(uint256 jobId,uint256 cumulativeTokens,bytes32 transcriptHash)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant DOMAIN_NAME_HASH = keccak256("Fabstir JobMarketplace");
    bytes32 private constant DOMAIN_VERSION_HASH = keccak256("1");
    uint256 private constant SECP256K1_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    enum SessionStatus {
        Active,
        Completed,
        TimedOut
    }

    /// @dev Field order is ABI: the public getter `sessionJobs(id)` returns these 17 fields in this order.
    struct SessionJob {
        uint256 id;
        address depositor;
        address host;
        address paymentToken; // 0 = ETH
        uint256 deposit;
        uint256 pricePerToken;
        uint256 tokensUsed;
        uint256 maxDuration;
        uint256 startTime;
        uint256 lastProofTime;
        uint256 proofInterval;
        SessionStatus status;
        uint256 withdrawnByHost; // gross payment for tokens (host net + treasury fee), set at settlement
        uint256 refundedToUser; // deposit - gross payment, set at settlement
        string conversationCID;
        bytes32 lastProofHash;
        string lastProofCID;
    }

    /// @dev What the depositor consented to, per session (ours only; see `FEATURE_USAGE_COUNTERSIGN`).
    ///      Tokens claimed above `acknowledged` are provisional; the dispute window runs from the last checkpoint.
    struct UsageRecord {
        uint128 acknowledged; // highest cumulative token count the depositor countersigned (or disputed down to)
        bool disputed; // the depositor disputed a provisional claim: only countersigned claims from then on
        bytes32 transcriptHash; // the transcript hash it gave with that count
    }

    struct ProofSubmission {
        bytes32 proofHash;
        uint256 tokensClaimed;
        uint64 timestamp; // packed with `verified` into one slot
        bool verified;
        string deltaCID;
    }

    INodeRegistryView public immutable nodeRegistry;
    IModelRegistryView public immutable modelRegistry;
    address payable public immutable hostEarnings;
    IProofRecorder public immutable proofSystem;
    uint256 public immutable feeBasisPoints;
    uint256 public immutable disputeWindow;
    uint256 public immutable inactivityTimeout;
    uint256 public immutable maxTokensPerSecond;

    address public treasuryAddress;
    uint256 public nextJobId = 1;
    uint256 public accumulatedTreasuryNative;
    mapping(address => uint256) public accumulatedTreasuryTokens;
    mapping(address => uint256) public refundCredits;
    mapping(address => mapping(address => uint256)) public tokenRefundCredits; // user => token => amount
    mapping(address => bool) public acceptedTokens;
    mapping(address => uint256) public tokenMinDeposits;
    mapping(address => uint256) public tokenMaxDeposits;
    mapping(uint256 => SessionJob) public sessionJobs;
    mapping(uint256 => bytes32) public sessionModel;
    mapping(uint256 => ProofSubmission[]) private _proofs;
    mapping(uint256 => UsageRecord) public usage;
    /// @notice Rules on substitution reports (zero: none are taken); appointed by the owner. A trusted role.
    address public substitutionValidator;
    /// @notice The evidence hash of each job a substitution report was upheld on (zero: none).
    mapping(uint256 => bytes32) public substitutionEvidence;
    /// @notice Seconds after a session settles during which a substitution report on it is still taken (it then
    ///         slashes the host's stake; the payment already went out). Owner-set; NodeRegistry's
    ///         `stakeUnbondingPeriod` should be at least this long, so a caught host cannot take its stake away first.
    uint256 public substitutionReportWindow = 1 days;
    /// @notice When each session settled (completed, timed out or reported; zero while active).
    mapping(uint256 => uint256) public settledAt;

    event SessionJobCreated(uint256 indexed jobId, address indexed depositor, address indexed host, uint256 deposit);
    event SessionJobCreatedForModel(
        uint256 indexed jobId, address indexed depositor, address indexed host, bytes32 modelId, uint256 deposit
    );
    event ProofSubmitted(
        uint256 indexed jobId,
        address indexed host,
        uint256 tokensClaimed,
        bytes32 proofHash,
        string proofCID,
        string deltaCID
    );
    /// @notice `hostEarnings` is the host's net (payment minus the treasury fee).
    event SessionCompleted(uint256 indexed jobId, uint256 totalTokensUsed, uint256 hostEarnings, uint256 userRefund);
    /// @notice `paymentAmount` is the gross payment for the tokens (host net + treasury fee).
    event SessionCompletedBy(
        uint256 indexed jobId,
        address indexed completedBy,
        uint256 tokensUsed,
        uint256 paymentAmount,
        uint256 refundAmount
    );
    event SessionTimedOut(uint256 indexed jobId, uint256 hostEarnings, uint256 userRefund);
    event RefundCredited(uint256 indexed jobId, address indexed depositor, address indexed token, uint256 amount);
    event RefundWithdrawn(address indexed depositor, address indexed token, uint256 amount);
    event TokenAccepted(address indexed token, uint256 minDeposit, uint256 maxDeposit);
    event TreasuryUpdated(address indexed treasury);
    event TreasuryWithdrawal(address indexed token, uint256 amount);
    event UsageAcknowledged(uint256 indexed jobId, uint256 cumulativeTokens, bytes32 transcriptHash);
    event CheckpointProven(
        uint256 indexed jobId, address indexed host, uint256 cumulativeTokens, bytes32 transcriptHash, bytes32 commitment
    );
    event UsageDisputed(
        uint256 indexed jobId, uint256 claimedTokens, uint256 acknowledgedTokens, bytes32 transcriptHash
    );

    event SubstitutionValidatorUpdated(address indexed validator);
    event SubstitutionReportWindowUpdated(uint256 window);
    /// @notice The validator upheld a substitution report: `host` is paid nothing for `jobId`, the depositor gets
    ///         the whole deposit back and `slashed` of the host's stake. The evidence (answer record and verdict,
    ///         re-checkable by anyone holding the named model) hashes to `evidenceHash` and lies at `evidenceUri`.
    event SubstitutionReported(
        uint256 indexed jobId,
        address indexed host,
        address indexed validator,
        bytes32 evidenceHash,
        string evidenceUri,
        uint256 slashed
    );

    modifier onlyTreasury() {
        require(msg.sender == treasuryAddress, "Only treasury");
        _;
    }

    /// @param feeBasisPoints_ Treasury share of each host payment, at most 10000.
    /// @param disputeWindow_ Seconds the host waits after its last checkpoint before it may complete (1 s..7 d).
    /// @param inactivityTimeout_ Seconds without a checkpoint after which anyone may time the session out.
    /// @param maxTokensPerSecond_ Rated host throughput; a checkpoint may claim twice this per elapsed second.
    constructor(
        address nodeRegistry_,
        address payable hostEarnings_,
        address proofSystem_,
        uint256 feeBasisPoints_,
        uint256 disputeWindow_,
        uint256 inactivityTimeout_,
        uint256 maxTokensPerSecond_
    ) {
        require(
            nodeRegistry_ != address(0) && hostEarnings_ != address(0) && proofSystem_ != address(0), "Zero address"
        );
        require(feeBasisPoints_ <= BASIS_POINTS, "Fee too high");
        require(disputeWindow_ >= 1 && disputeWindow_ <= MAX_DISPUTE_WINDOW, "Invalid dispute window");
        require(inactivityTimeout_ > 0, "Invalid inactivity timeout");
        require(maxTokensPerSecond_ > 0, "Invalid token rate");
        nodeRegistry = INodeRegistryView(nodeRegistry_);
        modelRegistry = IModelRegistryView(INodeRegistryView(nodeRegistry_).modelRegistry());
        hostEarnings = hostEarnings_;
        proofSystem = IProofRecorder(proofSystem_);
        feeBasisPoints = feeBasisPoints_;
        disputeWindow = disputeWindow_;
        inactivityTimeout = inactivityTimeout_;
        maxTokensPerSecond = maxTokensPerSecond_;
        treasuryAddress = msg.sender;
    }

    // ------------------------------------------------------------------ admin

    /// @notice Accepts `token` for deposits between `minDeposit` and `maxDeposit` (base units); calling it
    ///         again for the same token updates the limits.
    function addAcceptedToken(address token, uint256 minDeposit, uint256 maxDeposit) external onlyOwner {
        require(token != address(0), "Zero address");
        require(minDeposit > 0 && maxDeposit >= minDeposit, "Invalid deposit limits");
        acceptedTokens[token] = true;
        tokenMinDeposits[token] = minDeposit;
        tokenMaxDeposits[token] = maxDeposit;
        emit TokenAccepted(token, minDeposit, maxDeposit);
    }

    function setTreasury(address treasury) external onlyOwner {
        require(treasury != address(0), "Zero address");
        treasuryAddress = treasury;
        emit TreasuryUpdated(treasury);
    }

    /// @notice Appoints the validator whose substitution reports this marketplace acts on (zero: none).
    function setSubstitutionValidator(address validator) external onlyOwner {
        substitutionValidator = validator;
        emit SubstitutionValidatorUpdated(validator);
    }

    /// @notice How long after settlement a session may still be reported (see substitutionReportWindow).
    function setSubstitutionReportWindow(uint256 window) external onlyOwner {
        substitutionReportWindow = window;
        emit SubstitutionReportWindowUpdated(window);
    }

    // ------------------------------------------------------------------ opening sessions

    /// @notice Opens an ETH session with `msg.value` as the deposit.
    function createSessionJob(address host, uint256 pricePerToken, uint256 maxDuration, uint256 proofInterval)
        external
        payable
        nonReentrant
        returns (uint256 jobId)
    {
        jobId = _openSession(host, bytes32(0), address(0), msg.value, pricePerToken, maxDuration, proofInterval);
    }

    /// @notice Opens an ETH session for `modelId`, which must be approved and listed by the host.
    function createSessionJobForModel(
        address host,
        bytes32 modelId,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval
    ) external payable nonReentrant returns (uint256 jobId) {
        _requireModel(host, modelId);
        jobId = _openSession(host, modelId, address(0), msg.value, pricePerToken, maxDuration, proofInterval);
    }

    /// @notice Opens a session paid in an accepted ERC-20; approve `deposit` to this contract first.
    function createSessionJobWithToken(
        address host,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval
    ) external nonReentrant returns (uint256 jobId) {
        jobId = _openSession(host, bytes32(0), token, deposit, pricePerToken, maxDuration, proofInterval);
        _pullDeposit(token, deposit);
    }

    /// @notice Opens an ERC-20 session for `modelId`; approve `deposit` to this contract first.
    function createSessionJobForModelWithToken(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval
    ) external nonReentrant returns (uint256 jobId) {
        _requireModel(host, modelId);
        jobId = _openSession(host, modelId, token, deposit, pricePerToken, maxDuration, proofInterval);
        _pullDeposit(token, deposit);
    }

    // ------------------------------------------------------------------ checkpoints

    /// @notice The host claims `tokensClaimed` more tokens, committing to `proofHash` (the proof itself lives
    ///         off-chain at `proofCID`; `deltaCID` points at the conversation delta it covers).
    /// @param signature The host's 65-byte signature (r, s, v) of the Ethereum signed message of
    ///        keccak256(abi.encodePacked(proofHash, host, tokensClaimed)), as on the public marketplace.
    function submitProofOfWork(
        uint256 jobId,
        uint256 tokensClaimed,
        bytes32 proofHash,
        bytes calldata signature,
        string calldata proofCID,
        string calldata deltaCID
    ) external nonReentrant {
        SessionJob storage job = _session(jobId);
        _checkClaim(job, tokensClaimed);
        require(_proofSigner(proofHash, job.host, tokensClaimed, signature) == job.host, "Invalid proof signature");
        require(!usage[jobId].disputed, "Usage disputed");
        job.tokensUsed += tokensClaimed;
        job.lastProofTime = block.timestamp;
        job.lastProofHash = proofHash;
        job.lastProofCID = proofCID;
        _recordSubmission(jobId, tokensClaimed, proofHash, deltaCID);
        emit ProofSubmitted(jobId, msg.sender, tokensClaimed, proofHash, proofCID, deltaCID);
    }

    /// @notice The host claims up to `cumulativeTokens` in total, countersigned by the depositor: accepted at
    ///         once, with no rate cap and no minimum. Tokens already claimed provisionally up to that count become
    ///         acknowledged (no longer disputable); only tokens beyond `tokensUsed` are claimed anew.
    /// @param depositorSignature The depositor's 65-byte signature (r, s, v) of `usageDigest(jobId,
    ///        cumulativeTokens, transcriptHash)`.
    function submitCountersignedProof(
        uint256 jobId,
        uint256 cumulativeTokens,
        bytes32 transcriptHash,
        bytes32 proofHash,
        bytes calldata depositorSignature,
        string calldata proofCID,
        string calldata deltaCID
    ) external nonReentrant {
        SessionJob storage job = _session(jobId);
        require(msg.sender == job.host, "Only host");
        require(job.status == SessionStatus.Active, "Session not active");
        UsageRecord storage record = usage[jobId];
        require(cumulativeTokens > record.acknowledged, "Not above acknowledged usage");
        require(cumulativeTokens <= job.deposit * PRICE_PRECISION / job.pricePerToken, "Exceeds deposit");
        require(cumulativeTokens <= type(uint128).max, "Too many tokens");
        require(
            _recover(usageDigest(jobId, cumulativeTokens, transcriptHash), depositorSignature) == job.depositor,
            "Invalid usage signature"
        );
        record.acknowledged = uint128(cumulativeTokens);
        record.transcriptHash = transcriptHash;
        job.lastProofTime = block.timestamp;
        emit UsageAcknowledged(jobId, cumulativeTokens, transcriptHash);
        if (cumulativeTokens > job.tokensUsed) {
            uint256 claimed = cumulativeTokens - job.tokensUsed;
            job.tokensUsed = cumulativeTokens;
            job.lastProofHash = proofHash;
            job.lastProofCID = proofCID;
            _recordSubmission(jobId, claimed, proofHash, deltaCID);
            emit ProofSubmitted(jobId, msg.sender, claimed, proofHash, proofCID, deltaCID);
        }
    }

    /// @notice The depositor answers provisional claims with its own count: at or above what it countersigned,
    ///         below what was claimed, within `disputeWindow` seconds of the last checkpoint (the window in which
    ///         the host may not complete). Its count becomes the session's usage, and from then on only
    ///         countersigned claims are accepted.
    function disputeUsage(uint256 jobId, uint256 cumulativeTokens, bytes32 transcriptHash) external nonReentrant {
        SessionJob storage job = _session(jobId);
        require(msg.sender == job.depositor, "Only depositor");
        require(job.status == SessionStatus.Active, "Session not active");
        UsageRecord storage record = usage[jobId];
        require(
            job.tokensUsed > record.acknowledged && block.timestamp < job.lastProofTime + disputeWindow,
            "No claim in dispute window"
        );
        require(cumulativeTokens >= record.acknowledged, "Below acknowledged usage");
        require(cumulativeTokens < job.tokensUsed, "Not below claimed usage");
        emit UsageDisputed(jobId, job.tokensUsed, cumulativeTokens, transcriptHash);
        job.tokensUsed = cumulativeTokens;
        record.acknowledged = uint128(cumulativeTokens);
        record.transcriptHash = transcriptHash;
        record.disputed = true;
    }

    /// @notice The host proves a checkpoint it claimed: `proof` must verify (ProofSystem's checkpoint verifier)
    ///         against the usage commitment `usageDigest(jobId, cumulativeTokens, transcriptHash)`, which binds
    ///         this chain, this contract, the job, the count and the transcript. Reverts "Proof rejected" if not.
    function submitCheckpointProof(uint256 jobId, uint256 cumulativeTokens, bytes32 transcriptHash, bytes calldata proof)
        external
        nonReentrant
    {
        SessionJob storage job = _session(jobId);
        require(msg.sender == job.host, "Only host");
        require(cumulativeTokens > 0 && cumulativeTokens <= job.tokensUsed, "Tokens not claimed");
        bytes32 commitment = usageDigest(jobId, cumulativeTokens, transcriptHash);
        proofSystem.verifyCheckpoint(commitment, msg.sender, cumulativeTokens, sessionModel[jobId], proof);
        emit CheckpointProven(jobId, msg.sender, cumulativeTokens, transcriptHash, commitment);
    }

    // ------------------------------------------------------------------ ending sessions

    /// @notice The validator reports that the host of session `jobId` served another model than the job names.
    ///         An active session closes unpaid: the whole deposit goes back to the depositor. A session that
    ///         settled at most `substitutionReportWindow` seconds ago keeps its settlement (the payment went out).
    ///         Either way the host's stake is slashed (see SUBSTITUTION_SLASH_BPS) to the depositor, also stake
    ///         still unbonding after the host unregistered. A job is reported once.
    function reportSubstitution(uint256 jobId, bytes32 evidenceHash, string calldata evidenceUri)
        external
        nonReentrant
    {
        require(msg.sender == substitutionValidator && msg.sender != address(0), "Only validator");
        SessionJob storage job = _session(jobId);
        require(evidenceHash != bytes32(0), "No evidence");
        require(substitutionEvidence[jobId] == bytes32(0), "Already reported");
        bool active = job.status == SessionStatus.Active;
        require(active || block.timestamp <= settledAt[jobId] + substitutionReportWindow, "Report window over");
        substitutionEvidence[jobId] = evidenceHash;
        uint256 refund;
        if (active) {
            job.tokensUsed = 0;
            (, refund) = _close(job, SessionStatus.Completed);
        }
        uint256 slashed = nodeRegistry.slash(
            job.host, nodeRegistry.MIN_STAKE() * SUBSTITUTION_SLASH_BPS / BASIS_POINTS, job.depositor
        );
        emit SubstitutionReported(jobId, job.host, msg.sender, evidenceHash, evidenceUri, slashed);
        if (active) {
            emit SessionCompleted(jobId, 0, 0, refund);
            _refund(jobId, job.depositor, job.paymentToken, refund);
        }
    }

    /// @notice Ends and settles the session. The depositor may call at any time (settling accepts the claims it
    ///         did not dispute); the host once `disputeWindow` seconds have passed since its last checkpoint (or
    ///         the start), or at once when the depositor countersigned every token claimed.
    function completeSessionJob(uint256 jobId, string calldata conversationCID) external nonReentrant {
        SessionJob storage job = _session(jobId);
        require(job.status == SessionStatus.Active, "Session not active");
        if (msg.sender != job.depositor) {
            require(msg.sender == job.host, "Not authorized");
            if (job.tokensUsed == 0 || usage[jobId].acknowledged != job.tokensUsed) {
                require(block.timestamp >= job.lastProofTime + disputeWindow, "Must wait dispute window");
            }
        }
        job.conversationCID = conversationCID;
        (uint256 hostNet, uint256 refund) = _close(job, SessionStatus.Completed);
        emit SessionCompleted(jobId, job.tokensUsed, hostNet, refund);
        emit SessionCompletedBy(jobId, msg.sender, job.tokensUsed, job.withdrawnByHost, refund);
        _payOut(job, hostNet, refund);
    }

    /// @notice Anyone may settle a session past `maxDuration` seconds since its start, or past
    ///         `inactivityTimeout` seconds since its last checkpoint (or its start, before any checkpoint).
    function triggerSessionTimeout(uint256 jobId) external nonReentrant {
        SessionJob storage job = _session(jobId);
        require(job.status == SessionStatus.Active, "Session not active");
        require(
            block.timestamp > job.startTime + job.maxDuration || block.timestamp > job.lastProofTime + inactivityTimeout,
            "Session not timed out"
        );
        (uint256 hostNet, uint256 refund) = _close(job, SessionStatus.TimedOut);
        emit SessionTimedOut(jobId, hostNet, refund);
        _payOut(job, hostNet, refund);
    }

    // ------------------------------------------------------------------ withdrawals

    /// @notice Withdraws ETH refunds that could not be pushed at settlement.
    function withdrawRefund() external nonReentrant {
        uint256 amount = refundCredits[msg.sender];
        require(amount > 0, "No refund credit");
        refundCredits[msg.sender] = 0;
        SafeTransfer.sendValue(msg.sender, amount);
        emit RefundWithdrawn(msg.sender, address(0), amount);
    }

    /// @notice Withdraws `token` refunds that could not be pushed at settlement.
    function withdrawTokenRefund(address token) external nonReentrant {
        uint256 amount = tokenRefundCredits[msg.sender][token];
        require(amount > 0, "No refund credit");
        tokenRefundCredits[msg.sender][token] = 0;
        IERC20(token).safeTransfer(msg.sender, amount);
        emit RefundWithdrawn(msg.sender, token, amount);
    }

    function withdrawTreasuryNative() external nonReentrant onlyTreasury {
        uint256 amount = accumulatedTreasuryNative;
        require(amount > 0, "No fees");
        accumulatedTreasuryNative = 0;
        SafeTransfer.sendValue(msg.sender, amount);
        emit TreasuryWithdrawal(address(0), amount);
    }

    function withdrawTreasuryTokens(address token) external nonReentrant onlyTreasury {
        uint256 amount = accumulatedTreasuryTokens[token];
        require(amount > 0, "No fees");
        accumulatedTreasuryTokens[token] = 0;
        IERC20(token).safeTransfer(msg.sender, amount);
        emit TreasuryWithdrawal(token, amount);
    }

    // ------------------------------------------------------------------ views

    /// @notice What this marketplace adds to the public one, as `FEATURE_*` bits. The public contracts lack this
    ///         function; clients look for its selector in the code before calling it.
    function marketplaceFeatures() external pure returns (uint256) {
        return FEATURE_EXACT_BILLING | FEATURE_USAGE_COUNTERSIGN | FEATURE_CHECKPOINT_PROOFS
            | FEATURE_SUBSTITUTION_DISPUTES;
    }

    /// @notice The EIP-712 digest the depositor signs to countersign `cumulativeTokens` received on `jobId`
    ///         with transcript hash `transcriptHash` (domain: name "Fabstir JobMarketplace", version "1", this
    ///         chain's id, this contract).
    function usageDigest(uint256 jobId, uint256 cumulativeTokens, bytes32 transcriptHash)
        public
        view
        returns (bytes32)
    {
        bytes32 domain =
            keccak256(abi.encode(DOMAIN_TYPEHASH, DOMAIN_NAME_HASH, DOMAIN_VERSION_HASH, block.chainid, address(this)));
        bytes32 structHash = keccak256(abi.encode(USAGE_TYPEHASH, jobId, cumulativeTokens, transcriptHash));
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function getProofCount(uint256 jobId) external view returns (uint256) {
        return _proofs[jobId].length;
    }

    function getProofSubmission(uint256 jobId, uint256 index)
        external
        view
        returns (bytes32 proofHash, uint256 tokensClaimed, uint256 timestamp, bool verified, string memory deltaCID)
    {
        require(index < _proofs[jobId].length, "Proof index out of range");
        ProofSubmission storage submission = _proofs[jobId][index];
        return (
            submission.proofHash,
            submission.tokensClaimed,
            submission.timestamp,
            submission.verified,
            submission.deltaCID
        );
    }

    // ------------------------------------------------------------------ internals

    function _requireModel(address host, bytes32 modelId) private view {
        require(modelRegistry.isModelApproved(modelId), "Model not approved");
        require(nodeRegistry.nodeSupportsModel(host, modelId), "Host does not support model");
    }

    function _checkClaim(SessionJob storage job, uint256 tokensClaimed) private view {
        require(msg.sender == job.host, "Only host");
        require(job.status == SessionStatus.Active, "Session not active");
        require(tokensClaimed > 0, "Too few tokens");
        require(
            tokensClaimed <= 2 * maxTokensPerSecond * (block.timestamp - job.lastProofTime), "Excessive tokens claimed"
        );
        require(job.tokensUsed + tokensClaimed <= job.deposit * PRICE_PRECISION / job.pricePerToken, "Exceeds deposit");
    }

    /// @dev The address that signed the Ethereum signed message of keccak256(proofHash ‖ host ‖ tokens); zero for
    ///      a malformed or high-s signature (so it never equals a host).
    function _proofSigner(bytes32 proofHash, address host, uint256 tokensClaimed, bytes calldata signature)
        private
        pure
        returns (address)
    {
        bytes32 digest = keccak256(abi.encodePacked(proofHash, host, tokensClaimed));
        return _recover(keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", digest)), signature);
    }

    /// @dev The signer of `message` (r ‖ s ‖ v, v 27/28 or 0/1); zero for a high-s or otherwise invalid signature.
    function _recover(bytes32 message, bytes calldata signature) private pure returns (address) {
        require(signature.length == 65, "Invalid signature length");
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        if (uint256(s) > SECP256K1_HALF_ORDER || (v != 27 && v != 28)) return address(0);
        return ecrecover(message, v, r, s);
    }

    /// @dev Stores the submission, then has ProofSystem record (and, with a verifier, check) the proof hash.
    function _recordSubmission(uint256 jobId, uint256 tokensClaimed, bytes32 proofHash, string calldata deltaCID)
        private
    {
        ProofSubmission storage submission = _proofs[jobId].push();
        submission.proofHash = proofHash;
        submission.tokensClaimed = tokensClaimed;
        submission.timestamp = uint64(block.timestamp);
        submission.deltaCID = deltaCID;
        if (proofSystem.recordProof(proofHash, msg.sender, tokensClaimed, sessionModel[jobId], "")) {
            submission.verified = true;
        }
    }

    function _openSession(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval
    ) private returns (uint256 jobId) {
        require(pricePerToken > 0, "Invalid price");
        require(maxDuration > 0 && maxDuration <= MAX_SESSION_DURATION, "Invalid duration");
        require(proofInterval >= MIN_PROVEN_TOKENS, "Proof interval too small");
        _checkDeposit(token, deposit);
        require(nodeRegistry.isRegisteredNode(host), "Host not registered");
        require(nodeRegistry.isActiveNode(host), "Host not active");
        require(deposit * PRICE_PRECISION / pricePerToken >= proofInterval, "Deposit below proof interval");
        if (modelId == bytes32(0)) {
            require(pricePerToken >= nodeRegistry.getNodePricing(host, token), "Price below host minimum");
        } else {
            require(
                pricePerToken >= nodeRegistry.getModelPricing(host, modelId, token), "Price below host minimum for model"
            );
        }

        jobId = nextJobId++;
        SessionJob storage job = sessionJobs[jobId];
        job.id = jobId;
        job.depositor = msg.sender;
        job.host = host;
        job.paymentToken = token;
        job.deposit = deposit;
        job.pricePerToken = pricePerToken;
        job.maxDuration = maxDuration;
        job.startTime = block.timestamp;
        job.lastProofTime = block.timestamp;
        job.proofInterval = proofInterval;

        emit SessionJobCreated(jobId, msg.sender, host, deposit);
        if (modelId != bytes32(0)) {
            sessionModel[jobId] = modelId;
            emit SessionJobCreatedForModel(jobId, msg.sender, host, modelId, deposit);
        }
    }

    function _checkDeposit(address token, uint256 deposit) private view {
        uint256 minDeposit = MIN_DEPOSIT;
        uint256 maxDeposit = MAX_DEPOSIT;
        if (token != address(0)) {
            require(acceptedTokens[token], "Token not accepted");
            minDeposit = tokenMinDeposits[token];
            maxDeposit = tokenMaxDeposits[token];
        }
        require(deposit >= minDeposit, "Deposit too small");
        require(deposit <= maxDeposit, "Deposit too large");
    }

    /// @dev Pulls exactly `amount`; tokens that take a transfer fee are refused.
    function _pullDeposit(address token, uint256 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        require(IERC20(token).balanceOf(address(this)) - before == amount, "Deposit transfer mismatch");
    }

    function _session(uint256 jobId) private view returns (SessionJob storage job) {
        job = sessionJobs[jobId];
        require(job.id != 0, "Session not found");
    }

    /// @dev Effects of settlement: status, amounts, treasury accumulation. No external calls.
    function _close(SessionJob storage job, SessionStatus status) private returns (uint256 hostNet, uint256 refund) {
        job.status = status;
        settledAt[job.id] = block.timestamp;
        uint256 payment = job.tokensUsed * job.pricePerToken / PRICE_PRECISION;
        uint256 fee = payment * feeBasisPoints / BASIS_POINTS;
        hostNet = payment - fee;
        refund = job.deposit - payment;
        job.withdrawnByHost = payment;
        job.refundedToUser = refund;
        if (job.paymentToken == address(0)) {
            accumulatedTreasuryNative += fee;
        } else {
            accumulatedTreasuryTokens[job.paymentToken] += fee;
        }
    }

    /// @dev Interactions of settlement: fund and credit HostEarnings, then push (or credit) the refund.
    function _payOut(SessionJob storage job, uint256 hostNet, uint256 refund) private {
        address token = job.paymentToken;
        if (hostNet > 0) {
            if (token == address(0)) {
                SafeTransfer.sendValue(hostEarnings, hostNet);
            } else {
                IERC20(token).safeTransfer(hostEarnings, hostNet);
            }
            IHostEarningsCredit(hostEarnings).creditEarnings(job.host, hostNet, token);
        }
        if (refund > 0) {
            _refund(job.id, job.depositor, token, refund);
        }
    }

    function _refund(uint256 jobId, address depositor, address token, uint256 amount) private {
        bool sent;
        if (token == address(0)) {
            uint256 gasLimit = REFUND_PUSH_GAS;
            assembly ("memory-safe") {
                // No return data is copied, so a depositor cannot grief settlement with a huge revert reason.
                sent := call(gasLimit, depositor, amount, 0, 0, 0, 0)
            }
        } else {
            sent = IERC20(token).tryTransfer(depositor, amount);
        }
        if (!sent) {
            if (token == address(0)) {
                refundCredits[depositor] += amount;
            } else {
                tokenRefundCredits[depositor][token] += amount;
            }
            emit RefundCredited(jobId, depositor, token, amount);
        }
    }
}
