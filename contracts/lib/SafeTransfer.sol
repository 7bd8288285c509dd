// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "./IERC20.sol";

/// @title SafeTransfer
/// @notice ERC-20 transfers that also work with tokens that return nothing, and revert on any failure.
/// @dev A call succeeds when it does not revert, the token has code, and the return data is empty or
///      decodes to `true`. ETH sends revert on failure; callers that must not revert use their own call.
library SafeTransfer {
    function safeTransfer(IERC20 token, address to, uint256 value) internal {
        _callToken(token, abi.encodeCall(IERC20.transfer, (to, value)));
    }

    function safeTransferFrom(IERC20 token, address from, address to, uint256 value) internal {
        _callToken(token, abi.encodeCall(IERC20.transferFrom, (from, to, value)));
    }

    /// @notice Like safeTransfer, but reports failure instead of reverting.
    function tryTransfer(IERC20 token, address to, uint256 value) internal returns (bool) {
        (bool ok, bytes memory ret) = address(token).call(abi.encodeCall(IERC20.transfer, (to, value)));
        return ok && _returnedTrue(ret) && address(token).code.length > 0;
    }

    function sendValue(address to, uint256 value) internal {
        (bool ok, ) = payable(to).call{value: value}("");
        require(ok, "ETH transfer failed");
    }

    function _callToken(IERC20 token, bytes memory data) private {
        require(address(token).code.length > 0, "Token has no code");
        (bool ok, bytes memory ret) = address(token).call(data);
        require(ok && _returnedTrue(ret), "Token transfer failed");
    }

    function _returnedTrue(bytes memory ret) private pure returns (bool) {
        return ret.length == 0 || (ret.length >= 32 && uint256(bytes32(ret)) == 1);
    }
}
