// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title ReentrancyGuard
/// @notice Blocks a guarded function from being entered again before it returns.
/// @dev Uses 1/2 rather than 0/1 so that the slot never goes back to zero (cheaper re-entry checks).
abstract contract ReentrancyGuard {
    uint256 private constant NOT_ENTERED = 1;
    uint256 private constant ENTERED = 2;
    uint256 private _status = NOT_ENTERED;

    modifier nonReentrant() {
        require(_status == NOT_ENTERED, "Reentrant call");
        _status = ENTERED;
        _;
        _status = NOT_ENTERED;
    }
}
