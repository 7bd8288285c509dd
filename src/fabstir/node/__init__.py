"""The reference host node: HTTP API and ``/v1/ws`` over a llama.cpp engine."""

from fabstir.node.config import NodeConfig, load_node_config
from fabstir.node.server import NodeServer, serve_node

__all__ = ["NodeConfig", "NodeServer", "load_node_config", "serve_node"]
