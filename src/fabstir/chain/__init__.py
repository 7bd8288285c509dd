"""The marketplace on chain: our contracts' artifacts, chain backends, deployment and typed records.

This package is the one seam to the contracts: the SDK, the node and the CLI call them only through the typed
wrappers in :mod:`~fabstir.chain.jobs` (JobMarketplace, ProofSystem), :mod:`~fabstir.chain.registry`
(NodeRegistry, HostEarnings) and :mod:`~fabstir.chain.tokens` (ERC-20), and price with
:mod:`~fabstir.chain.money`.
"""

from fabstir.chain.backend import Chain, dev_account, dev_accounts
from fabstir.chain.contracts import Deployment, Marketplace, load_artifact, model_id
from fabstir.chain.deploy import deploy_marketplace
from fabstir.chain.metadata import HostMetadata, MetadataError, build_host_metadata, parse_host_metadata
from fabstir.chain.money import Settlement, format_units, parse_units, settle, token_cost
from fabstir.chain.network import NetworkConfig
from fabstir.chain.records import HostRecord, JobStatus, SessionJob

__all__ = [
    "Chain",
    "Deployment",
    "HostMetadata",
    "HostRecord",
    "JobStatus",
    "Marketplace",
    "MetadataError",
    "NetworkConfig",
    "SessionJob",
    "Settlement",
    "build_host_metadata",
    "deploy_marketplace",
    "dev_account",
    "dev_accounts",
    "format_units",
    "load_artifact",
    "model_id",
    "parse_host_metadata",
    "parse_units",
    "settle",
    "token_cost",
]
