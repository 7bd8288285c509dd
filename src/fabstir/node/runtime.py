"""What a running node holds: its configuration, inference service and sessions."""

from __future__ import annotations

import dataclasses
import functools
import time

import coincurve
from nacl.signing import SigningKey

from fabstir._version import __version__
from fabstir.errors import ConfigError
from fabstir.node.admission import Admission
from fabstir.node.auth import NodeAuthenticator
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.fairness import ConcurrencyCap
from fabstir.node.inference import InferenceService
from fabstir.node.ratelimit import RateLimiter
from fabstir.node.sessions import SessionStore
from fabstir.protocol import Feature
from fabstir.protocol.e2e import E2EError, InitReplayCache, decode_hex
from fabstir.protocol.e2e_keys import random_private_key
from fabstir.protocol.signing import ReplayCache

__all__ = ["NodeRuntime"]


@dataclasses.dataclass
class NodeRuntime:
    """Shared state of one node process, handed to every handler."""

    config: NodeConfig
    inference: InferenceService
    sessions: SessionStore
    limiter: RateLimiter | None = None
    """Per-client and per-session request limits (built from the config when not given)."""
    concurrency: ConcurrencyCap | None = None
    """Per-client cap on answers in flight (built from ``max_concurrent_per_client`` when not given)."""
    signing_key: SigningKey = dataclasses.field(default_factory=SigningKey.generate, repr=False)
    """Signs every answer's receipt; its public key is in ``connected`` and ``/v1/version``."""
    replay_cache: ReplayCache = dataclasses.field(default_factory=ReplayCache, repr=False)
    """Nonces of signed client messages seen in the last two minutes."""
    billing: BillingService | None = None
    """Checkpoints and settlement on chain; ``None`` for a free, off-chain node."""
    version: str = __version__
    started_at: float = dataclasses.field(default_factory=time.time)
    e2e_key: bytes | None = dataclasses.field(default=None, repr=False)
    """The host's secp256k1 key for end-to-end encryption (see :meth:`_default_e2e_key`)."""
    init_replays: InitReplayCache = dataclasses.field(default_factory=InitReplayCache, repr=False)
    """Every ``encrypted_session_init`` this node accepted recently (a replayed one is refused)."""

    def __post_init__(self) -> None:
        if self.e2e_key is None:
            self.e2e_key = self._default_e2e_key()
        if self.limiter is None:
            config = self.config
            self.limiter = RateLimiter(client_per_minute=config.rate_limit_per_minute,
                                       client_burst=config.rate_limit_burst,
                                       session_per_minute=config.session_rate_limit_per_minute,
                                       session_burst=config.session_rate_limit_burst)
        if self.concurrency is None:
            self.concurrency = ConcurrencyCap(self.config.max_concurrent_per_client)

    @property
    def e2e_public_key(self) -> str:
        """Compressed secp256k1 public key (hex) of :attr:`e2e_key`: the registry metadata's ``publicKey``."""
        assert self.e2e_key is not None
        return coincurve.PrivateKey(self.e2e_key).public_key.format(compressed=True).hex()

    def _default_e2e_key(self) -> bytes:
        """The paid host's account key, else the configured ``host_key``, else a new random key.

        Raises:
            ConfigError: ``host_key`` is not a valid secp256k1 private key.
        """
        if self.billing is not None:
            return bytes(self.billing.host.account.key)
        if self.config.host_key:
            try:
                key = decode_hex(self.config.host_key.strip(), "host_key")
                coincurve.PrivateKey(key)
            except (E2EError, ValueError) as exc:
                raise ConfigError("host_key is not a secp256k1 private key (32 bytes of hex)") from exc
            if len(key) != 32:
                raise ConfigError("host_key is not a secp256k1 private key (32 bytes of hex)")
            return key
        return random_private_key()

    @functools.cached_property
    def admission(self) -> Admission:
        """The one admission step of every serving path (jobs, depositor authentication, owners)."""
        return Admission(self.billing, self.config)

    @functools.cached_property
    def authenticator(self) -> NodeAuthenticator:
        """Challenges and session tokens (JWT, signed with :attr:`signing_key`)."""
        return NodeAuthenticator(self.signing_key, self.billing, token_ttl=self.config.auth_token_ttl)

    @property
    def signing_public_key(self) -> str:
        return self.signing_key.verify_key.encode().hex()

    @property
    def features(self) -> tuple[str, ...]:
        """Extensions this node serves, advertised in ``/v1/version`` and acks."""
        if not self.config.extensions:
            return ()
        features = [Feature.SERVER_CONTEXT, Feature.MESSAGE_INDEX, Feature.SESSION_RESUME,
                    Feature.STREAM_CANCEL, Feature.HTTP_SSE, Feature.SIGNED_RECEIPTS, Feature.RATE_LIMITS,
                    Feature.SIGNED_MESSAGES, Feature.CONTINUE_FROM]
        if self.billing is not None:  # a paid node: JWT auth, and it takes the depositor's usage countersignatures
            features += [Feature.JWT_AUTH, Feature.USAGE_COUNTERSIGN]
        if self.config.ws_compression:
            features.append(Feature.PERMESSAGE_DEFLATE)
        if self.config.encryption:
            features += [Feature.E2E, Feature.E2E_COMPRESSION]
        if self.config.engine in ("llama", "llama-batch"):  # their receipts carry activation fingerprints
            features.append(Feature.ACTIVATION_FINGERPRINT)
        return tuple(str(f) for f in features)
