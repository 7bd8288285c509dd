// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IProofVerifier} from "../../../contracts/IProofVerifier.sol";

// Test doubles for tests/chain. Built by scripts/build_contracts.py into tests/chain/artifacts (never shipped).

/// @notice A proof verifier whose answer the test sets; counts the proofs it was asked about.
contract MockVerifier is IProofVerifier {
    bool public result = true;
    uint256 public calls;

    function setResult(bool value) external {
        result = value;
    }

    function verify(bytes32, address, uint256, bytes32, bytes calldata) external returns (bool) {
        calls += 1;
        return result;
    }
}

/// @notice A contract wallet that acts as a depositor and accepts, rejects, or burns all gas on incoming ETH.
contract DepositorWallet {
    enum Mode {
        Accept,
        Reject,
        BurnGas
    }

    address public immutable owner;
    Mode public mode = Mode.Reject;

    constructor() {
        owner = msg.sender;
    }

    function setMode(Mode value) external {
        mode = value;
    }

    /// @notice Calls `to` with `value` wei; bubbles up a revert.
    function execute(address to, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        require(msg.sender == owner, "Only owner");
        (bool ok, bytes memory ret) = to.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        if (mode == Mode.Reject) revert("Rejecting ETH");
        if (mode == Mode.BurnGas) {
            while (true) {}
        }
    }
}

/// @notice A minimal ERC-20 (anyone may mint) whose transfers to a blocked address return false.
contract BlockingToken {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    mapping(address => bool) public blocked;

    function mint(address to, uint256 amount) external {
        balanceOf[to] += amount;
    }

    function setBlocked(address account, bool value) external {
        blocked[account] = value;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        return _move(msg.sender, to, amount);
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        require(allowance[from][msg.sender] >= amount, "Insufficient allowance");
        allowance[from][msg.sender] -= amount;
        return _move(from, to, amount);
    }

    function _move(address from, address to, uint256 amount) private returns (bool) {
        if (blocked[to] || balanceOf[from] < amount) return false;
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
        return true;
    }
}
