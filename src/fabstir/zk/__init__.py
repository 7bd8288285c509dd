"""Checkpoint proofs (issue 14 P3): an EZKL circuit bound to a checkpoint's usage commitment, verified on chain."""
