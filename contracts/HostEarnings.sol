// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "./lib/IERC20.sol";
import {Ownable} from "./lib/Ownable.sol";
import {ReentrancyGuard} from "./lib/ReentrancyGuard.sol";
import {SafeTransfer} from "./lib/SafeTransfer.sol";

/// @title HostEarnings
/// @notice Holds what hosts have earned (ETH as token 0, or ERC-20s) until they withdraw it.
/// @dev Authorized callers (the marketplace) first send the funds, then call creditEarnings. A credit is
///      refused unless this contract's balance of the token covers everything owed, so a caller cannot credit
///      money it never sent.
contract HostEarnings is Ownable, ReentrancyGuard {
    using SafeTransfer for IERC20;

    mapping(address => mapping(address => uint256)) private _earnings; // host => token => amount
    mapping(address => uint256) public totalOwed; // token => sum of all hosts' balances
    mapping(address => bool) public authorizedCallers;

    event EarningsCredited(address indexed host, address indexed token, uint256 amount, uint256 newBalance);
    event EarningsWithdrawn(address indexed host, address indexed token, uint256 amount, uint256 remaining);
    event CallerAuthorized(address indexed caller, bool authorized);

    modifier onlyAuthorized() {
        require(authorizedCallers[msg.sender], "Not authorized");
        _;
    }

    function setAuthorizedCaller(address caller, bool authorized) external onlyOwner {
        require(caller != address(0), "Zero address");
        authorizedCallers[caller] = authorized;
        emit CallerAuthorized(caller, authorized);
    }

    /// @notice ETH comes only from authorized callers, ahead of the matching creditEarnings.
    receive() external payable {
        require(authorizedCallers[msg.sender], "Not authorized");
    }

    /// @notice Adds `amount` of `token` (0 = ETH) to `host`'s balance; the funds must already be here.
    function creditEarnings(address host, uint256 amount, address token) external onlyAuthorized {
        require(host != address(0), "Zero address");
        require(amount > 0, "Zero amount");
        uint256 owed = totalOwed[token] + amount;
        require(_held(token) >= owed, "Credit not funded");
        totalOwed[token] = owed;
        uint256 balance = _earnings[host][token] + amount;
        _earnings[host][token] = balance;
        emit EarningsCredited(host, token, amount, balance);
    }

    /// @notice Sends `amount` of the caller's `token` earnings (0 = ETH) to the caller.
    function withdraw(uint256 amount, address token) external nonReentrant {
        require(amount > 0, "Zero amount");
        _withdraw(amount, token);
    }

    /// @notice Sends all of the caller's `token` earnings (0 = ETH) to the caller.
    function withdrawAll(address token) external nonReentrant {
        uint256 amount = _earnings[msg.sender][token];
        require(amount > 0, "No earnings");
        _withdraw(amount, token);
    }

    function getBalance(address host, address token) external view returns (uint256) {
        return _earnings[host][token];
    }

    function _withdraw(uint256 amount, address token) private {
        uint256 balance = _earnings[msg.sender][token];
        require(balance >= amount, "Insufficient earnings");
        uint256 remaining = balance - amount;
        _earnings[msg.sender][token] = remaining;
        totalOwed[token] -= amount;
        if (token == address(0)) {
            SafeTransfer.sendValue(msg.sender, amount);
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
        emit EarningsWithdrawn(msg.sender, token, amount, remaining);
    }

    function _held(address token) private view returns (uint256) {
        return token == address(0) ? address(this).balance : IERC20(token).balanceOf(address(this));
    }
}
