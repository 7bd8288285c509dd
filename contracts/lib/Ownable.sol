// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Ownable
/// @notice Single-owner access control: the deployer owns the contract and may hand it on.
abstract contract Ownable {
    address public owner;

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    modifier onlyOwner() {
        require(msg.sender == owner, "Only owner");
        _;
    }

    /// @notice Hands ownership to `newOwner` (never the zero address: renouncing is not offered).
    function transferOwnership(address newOwner) external onlyOwner {
        require(newOwner != address(0), "Zero address");
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }
}
