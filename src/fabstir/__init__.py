"""fabstir: SDK and reference host node for a decentralized LLM inference marketplace."""

__version__ = "0.1.0"
