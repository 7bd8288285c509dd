"""Compiled contract artifacts (ABI and bytecode JSON), built by scripts/build_contracts.py."""
