"""Test helpers shipped with fabstir (fixtures, tiny models)."""

__all__: list[str] = []
