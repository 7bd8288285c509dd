"""``FabstirSDK``: the client entry point, holding settings and the managers."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount
from nacl.signing import SigningKey

from fabstir.chain.backend import Chain
from fabstir.chain.contracts import Deployment, Marketplace
from fabstir.discovery.manager import DiscoveryManager
from fabstir.discovery.peers import PeerManager
from fabstir.discovery.sources import DiscoverySource
from fabstir.errors import ConfigError
from fabstir.sdk.billing import BillingTracker
from fabstir.sdk.config import RetryPolicy, Timeouts
from fabstir.sdk.connection import Connector, connect_host
from fabstir.sdk.inference import InferenceManager
from fabstir.sdk.recording import ConversationRecorder
from fabstir.sdk.registry import NodeRegistryClient
from fabstir.sdk.sessions import SessionManager
from fabstir.sdk.types import PromptOptions
from fabstir.sdk.usage_log import UsageLog
from fabstir.storage import Backend, ConversationStore, StorageKey

if TYPE_CHECKING:
    from fabstir.sdk.proofs import ProofsClient
    from fabstir.sdk.sync import SyncSDK

__all__ = ["FabstirSDK"]


class FabstirSDK:
    """The fabstir client.

    Settings are keyword-only; each has a default. Precedence: keyword argument
    > environment (``FABSTIR_NO_COMPRESSION=1`` turns compression off) > default.

    Sessions are end-to-end encrypted when the host's public key is known (its registry
    metadata ``publicKey``), see :meth:`InferenceManager.connect_to_session`.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with FabstirSDK() as sdk:
            await sdk.inference.connect_to_session("139", "http://127.0.0.1:8080", job_id=139)
            result = await sdk.inference.send_prompt("Hello!")

    With ``storage`` every exchange is stored as it happens, encrypted on the client (see
    :mod:`fabstir.sdk.recording` and ``docs/storage.md``): a :class:`~fabstir.storage.ConversationStore`, or a
    :class:`~fabstir.storage.Backend` opened with ``storage_key`` (default: derived from ``account``'s
    private key)::

        FabstirSDK(account=account, storage=SqliteBackend())
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        compression: bool | None = None,
        default_options: PromptOptions | None = None,
        chain: Chain | None = None,
        deployment: Deployment | None = None,
        account: LocalAccount | None = None,
        signing_key: SigningKey | None = None,
        encryption: bool | None = None,
        discovery_sources: Iterable[DiscoverySource] = (),
        peers: PeerManager | None = None,
        connector: Connector | None = None,
        storage: ConversationStore | Backend | None = None,
        storage_key: StorageKey | None = None,
        failover: bool = True,
        usage_log: UsageLog | str | os.PathLike[str] | bool | None = None,
    ) -> None:
        self.chain = chain
        self.deployment = deployment
        self.account = account
        self.signing_key = signing_key
        """Ed25519 key that signs every message sent to hosts (see fabstir.keys for key files)."""
        self.encryption = encryption
        """Default end-to-end encryption mode of ``inference.connect_to_session``: ``None`` encrypts whenever the
        host's public key is given, ``True`` always (never plaintext), ``False`` never."""
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        if compression is None:
            compression = os.environ.get("FABSTIR_NO_COMPRESSION", "") not in ("1", "true", "yes")
        self.compression = compression
        self.default_options = default_options or PromptOptions()
        self.connector: Connector = connector or connect_host
        """Opens each session's transport to a host (default: a WebSocket to its ``/v1/ws``)."""
        self.failover = failover
        """Move an answer whose host dies or stalls to another host, which continues it (see
        :mod:`fabstir.sdk.switching`); on by default, where a chain or discovery sources can name another host."""
        self._discovery_sources = list(discovery_sources)
        self._peers = peers
        self.storage: ConversationStore | None = _open_storage(storage, storage_key, account)
        self.usage_log: UsageLog | None = _open_usage_log(usage_log)
        """Where paid sessions record what each job streamed to us, for disputes after a restart (default
        ``$XDG_DATA_HOME/fabstir/usage.sqlite``, opened on first use; ``usage_log=False``: memory only)."""
        """Where conversations are stored as they happen (``None``: in memory only, the default)."""
        self.recorder: ConversationRecorder | None = ConversationRecorder(self.storage) if self.storage is not None else None
        """The one writer to :attr:`storage` (``None`` without storage)."""

    @functools.cached_property
    def inference(self) -> InferenceManager:
        """Streaming chat with hosts (plan 11.1-11.3)."""
        return InferenceManager(self)

    @functools.cached_property
    def sessions(self) -> SessionManager:
        """Paid session jobs on chain: create, inspect, complete, time out."""
        return SessionManager(self)

    @functools.cached_property
    def proofs(self) -> ProofsClient:
        """Checkpoint proofs verified on chain, per job (issue 14 P3)."""
        from fabstir.sdk.proofs import ProofsClient

        return ProofsClient(self)

    @functools.cached_property
    def registry(self) -> NodeRegistryClient:
        """Hosts registered on chain (plan 12.1)."""
        return NodeRegistryClient(self)

    @functools.cached_property
    def discovery(self) -> DiscoveryManager:
        """Unified discovery (plan 12.5): the chain's registry first when the SDK has a chain, then the
        ``discovery_sources`` given (HTTP service, mDNS, DHT...), with ``peers`` as the observations."""
        sources: list[DiscoverySource] = []
        if self.chain is not None and self.deployment is not None:
            from fabstir.discovery.chain_source import ChainSource

            sources.append(ChainSource(self))
        sources.extend(self._discovery_sources)
        return DiscoveryManager(sources, peers=self._peers)

    @functools.cached_property
    def billing(self) -> BillingTracker:
        """Token usage and costs per session (plan 11.4)."""
        return BillingTracker()

    @functools.cached_property
    def marketplace(self) -> Marketplace:
        """The marketplace contracts; needs ``chain`` and ``deployment``.

        Raises:
            ConfigError: the SDK was created without a chain or deployment.
        """
        if self.chain is None or self.deployment is None:
            raise ConfigError("this operation needs a chain: FabstirSDK(chain=..., deployment=...)")
        return Marketplace(self.chain, self.deployment)

    def require_account(self) -> LocalAccount:
        """The account that signs transactions.

        Raises:
            ConfigError: the SDK was created without ``account``.
        """
        if self.account is None:
            raise ConfigError("this operation sends a transaction: FabstirSDK(account=...)")
        return self.account

    def sync(self) -> SyncSDK:
        """This SDK with blocking methods (same names and arguments), for code without an event loop; see
        :mod:`fabstir.sdk.sync`. Use it as ``with sdk.sync() as client:``."""
        from fabstir.sdk.sync import SyncSDK

        return SyncSDK(self)

    async def aclose(self) -> None:
        """Close every open session."""
        if "inference" in self.__dict__:
            await self.inference.aclose()
        if self.recorder is not None:
            await self.recorder.aclose()
        if self.usage_log is not None:
            self.usage_log.close()

    async def __aenter__(self) -> FabstirSDK:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _open_storage(storage: ConversationStore | Backend | None, key: StorageKey | None,
                  account: LocalAccount | None) -> ConversationStore | None:
    """The store ``FabstirSDK(storage=..., storage_key=...)`` describes."""
    if storage is None or isinstance(storage, ConversationStore):
        if key is not None and storage is None:
            raise ConfigError("storage_key needs storage=: a backend such as SqliteBackend()",
                              code="STORAGE_NOT_CONFIGURED")
        return storage
    if key is None:
        if account is None:
            raise ConfigError("storage needs a key: storage_key=StorageKey.from_secret(...) or account=...",
                              code="STORAGE_KEY_REQUIRED")
        key = StorageKey.from_wallet_key(bytes(account.key))
    return ConversationStore.open(storage, key)


def _open_usage_log(usage_log: UsageLog | str | os.PathLike[str] | bool | None) -> UsageLog | None:
    """The log ``FabstirSDK(usage_log=...)`` describes: ``None``/``True`` the default file, ``False`` none."""
    if usage_log is False:
        return None
    if usage_log is None or usage_log is True:
        return UsageLog()
    return usage_log if isinstance(usage_log, UsageLog) else UsageLog(usage_log)
