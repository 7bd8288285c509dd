"""load_node_config: defaults < TOML file < FABSTIR_NODE_* environment < overrides, with typed values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from fabstir.errors import ConfigError
from fabstir.node.config import ENV_PREFIX, NodeConfig, load_node_config
from fabstir.protocol import DEFAULT_MAX_FRAME_BYTES

DEFAULTS = {
    "host": "127.0.0.1", "port": 8080, "model_path": None, "model_id": None, "template": "plain",
    "context_window": 2048, "parallel": 2, "threads": None, "max_frame_bytes": DEFAULT_MAX_FRAME_BYTES,
    "max_sessions": 10_000, "extensions": True, "ws_compression": True, "repeat_penalty": 1.1, "seed": 0,
    "network": None, "host_key": None, "model_repo": "local", "checkpoint_tokens": 1000, "ledger_path": None,
    "rate_limit_per_minute": 1200, "rate_limit_burst": 200, "session_rate_limit_per_minute": 120,
    "session_rate_limit_burst": 20, "require_auth": True, "insecure_serve_without_depositor_auth": False,
    "auth_token_ttl": 900, "require_signed_messages": False,
    "signing_key_file": None, "encryption": True, "discovery_url": None, "announce_mdns": False,
    "mdns_interface": "127.0.0.1", "dht_bootstrap": None, "dht_port": 0, "announce_ttl": 60, "announce_price": 0,
    "announce_region": None, "public_url": None, "max_concurrent_per_client": 4,
    "request_read_timeout": 30.0, "ws_idle_timeout": 300.0, "max_connections_per_address": 64,
    "engine": "llama", "upstream": None, "flash_attention": False, "checkpoint_proofs": False, "zk_cache": None,
}


def toml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_node_config(env={})
    assert dataclasses.asdict(config) == DEFAULTS
    assert config == NodeConfig()
    assert DEFAULT_MAX_FRAME_BYTES == 1 << 20


def test_host_key_is_not_in_the_repr() -> None:
    config = NodeConfig(host_key="0x" + "ab" * 32)
    assert "abab" not in repr(config) and "host_key" not in repr(config)


def test_env_prefix() -> None:
    assert ENV_PREFIX == "FABSTIR_NODE_"


def test_process_environment_is_read_when_env_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_NODE_PORT", "9123")
    assert load_node_config().port == 9123
    assert load_node_config(env={}).port == 8080, "an explicit env mapping replaces os.environ"


def test_toml_node_table(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[node]\nport = 9000\ntemplate = "chatml"\nrepeat_penalty = 1.0\n'
                               'extensions = false\nthreads = 3\nmodel_path = "/models/m.gguf"\n')
    config = load_node_config(path, env={})
    assert dataclasses.asdict(config) == {**DEFAULTS, "port": 9000, "template": "chatml", "repeat_penalty": 1.0,
                                          "extensions": False, "threads": 3, "model_path": "/models/m.gguf"}


def test_toml_top_level_keys(tmp_path: Path) -> None:
    path = toml_file(tmp_path, 'port = 9001\ncontext_window = 512\nhost = "0.0.0.0"\n')
    config = load_node_config(str(path), env={})
    assert dataclasses.asdict(config) == {**DEFAULTS, "port": 9001, "context_window": 512, "host": "0.0.0.0"}


def test_toml_integer_for_float_field_becomes_float(tmp_path: Path) -> None:
    config = load_node_config(toml_file(tmp_path, "repeat_penalty = 1\n"), env={})
    assert config.repeat_penalty == 1.0 and isinstance(config.repeat_penalty, float)


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "[node]\nport = 9000\nparallel = 3\nseed = 5\ncontext_window = 1024\n")
    env = {"FABSTIR_NODE_PARALLEL": "4", "FABSTIR_NODE_SEED": "6", "FABSTIR_NODE_CONTEXT_WINDOW": "4096"}
    overrides = {"seed": 7, "context_window": None, "threads": None, "model_id": "m"}
    config = load_node_config(path, env=env, overrides=overrides)
    assert config.port == 9000  # file only
    assert config.parallel == 4  # env beats file
    assert config.seed == 7  # override beats env and file
    assert config.context_window == 4096  # a None override is "not given": env stays
    assert config.threads is None  # a None override does not clear anything either
    assert config.model_id == "m"
    assert dataclasses.asdict(config) == {**DEFAULTS, "port": 9000, "parallel": 4, "seed": 7,
                                          "context_window": 4096, "model_id": "m"}


def test_env_ignores_unrelated_variables() -> None:
    env = {"FABSTIR_PORT": "1", "fabstir_node_port": "2", "PORT": "3", "FABSTIR_NODE_UNKNOWN": "4",
           "FABSTIR_SDK_PORT": "5"}
    assert load_node_config(env=env) == NodeConfig()


@pytest.mark.parametrize("name,raw,value", [
    ("PORT", "9000", 9000),
    ("PORT", " 9000 ", 9000),
    ("PORT", "0", 0),
    ("CONTEXT_WINDOW", "512", 512),
    ("REPEAT_PENALTY", "1.0", 1.0),
    ("REPEAT_PENALTY", "1.25", 1.25),
    ("REPEAT_PENALTY", "2", 2.0),
    ("EXTENSIONS", "false", False),
    ("EXTENSIONS", "0", False),
    ("EXTENSIONS", "No", False),
    ("EXTENSIONS", "off", False),
    ("WS_COMPRESSION", "TRUE", True),
    ("WS_COMPRESSION", "1", True),
    ("WS_COMPRESSION", "yes", True),
    ("WS_COMPRESSION", "on", True),
    ("THREADS", "4", 4),
    ("THREADS", "none", None),
    ("THREADS", "None", None),
    ("THREADS", "", None),
    ("HOST", "::1", "::1"),
    ("MODEL_PATH", " /spaced path/m.gguf", " /spaced path/m.gguf"),  # strings are kept as given
    ("TEMPLATE", "gemma", "gemma"),
])
def test_env_coercion(name: str, raw: str, value: object) -> None:
    config = load_node_config(env={ENV_PREFIX + name: raw})
    got = getattr(config, name.lower())
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize("name,raw,message", [
    ("PORT", "eighty", "port: cannot parse 'eighty' as int"),
    ("PORT", "80.5", "port: cannot parse '80.5' as int"),
    ("PORT", "none", "port: cannot parse 'none' as int"),  # only optional fields accept "none"
    ("PORT", "", "port: cannot parse '' as int"),
    ("SEED", "0x10", "seed: cannot parse '0x10' as int"),
    ("THREADS", "many", "threads: cannot parse 'many' as int | None"),
    ("REPEAT_PENALTY", "high", "repeat_penalty: cannot parse 'high' as float"),
    ("EXTENSIONS", "maybe", "extensions: cannot parse 'maybe' as bool"),
    ("EXTENSIONS", "", "extensions: cannot parse '' as bool"),
    ("PORT", "70000", "port must be 0-65535, got 70000"),
    ("PORT", "-1", "port must be 0-65535, got -1"),
    ("PARALLEL", "0", "parallel must be at least 1"),
    ("CONTEXT_WINDOW", "0", "context_window must be at least 1"),
    ("MAX_FRAME_BYTES", "-5", "max_frame_bytes must be at least 1"),
    ("MAX_SESSIONS", "0", "max_sessions must be at least 1"),
    ("THREADS", "0", "threads must be at least 1"),
    ("TEMPLATE", "alpaca", "unknown template 'alpaca'; choose one of plain, raw, chatml, gemma"),
])
def test_env_errors(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(env={ENV_PREFIX + name: raw})
    assert caught.value.message == message
    assert caught.value.code == "CONFIG_ERROR"


@pytest.mark.parametrize("text,message", [
    ("port = 1.5\n", "port: expected int, got 1.5"),
    ("port = true\n", "port: expected int, got True"),
    ("port = [8080]\n", "port: expected int, got [8080]"),
    ('port = "eighty"\n', "port: cannot parse 'eighty' as int"),
    ("extensions = 1\n", "extensions: expected bool, got 1"),
    ('extensions = "maybe"\n', "extensions: cannot parse 'maybe' as bool"),
    ("repeat_penalty = true\n", "repeat_penalty: expected float, got True"),
    ("model_path = 5\n", "model_path: expected str | None, got 5"),
    ("threads = 2.0\n", "threads: expected int | None, got 2.0"),
    ("[node]\nport = 70000\n", "port must be 0-65535, got 70000"),
    ("[node]\nparallel = 0\n", "parallel must be at least 1"),
    ('[node]\ntemplate = "llama"\n', "unknown template 'llama'; choose one of plain, raw, chatml, gemma"),
    ("[node]\nportt = 1\n", "unknown node setting(s): portt"),
    ("zeta = 1\nalpha = 2\nport = 1\n", "unknown node setting(s): alpha, zeta"),
    ("[server]\nport = 1\n", "unknown node setting(s): server"),
])
def test_file_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(toml_file(tmp_path, text), env={})
    assert caught.value.message == message


def test_toml_strings_are_coerced_like_env(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[node]\nport = "9002"\nextensions = "off"\nthreads = "none"\n')
    config = load_node_config(path, env={})
    assert (config.port, config.extensions, config.threads) == (9002, False, None)


def test_node_that_is_not_a_table(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "node = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_node_config(path, env={})
    assert caught.value.message == f"{path}: [node] must be a table"


def test_malformed_toml(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "[node]\nport = \n")
    with pytest.raises(ConfigError) as caught:
        load_node_config(path, env={})
    assert caught.value.message.startswith(f"cannot read config file {path}: ")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_toml_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'model_id = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_node_config(path, env={})
    assert caught.value.message.startswith(f"cannot read config file {path}: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_node_config(path, env={})
    assert caught.value.message.startswith(f"cannot read config file {path}: ")
    assert "No such file or directory" in caught.value.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(tmp_path, env={})
    assert caught.value.message.startswith(f"cannot read config file {tmp_path}: ")


@pytest.mark.parametrize("overrides,message", [
    ({"prot": 1}, "unknown node setting(s): prot"),
    ({"port": 70000}, "port must be 0-65535, got 70000"),
    ({"port": 80.5}, "port: expected int, got 80.5"),
    ({"parallel": 0}, "parallel must be at least 1"),
    ({"template": "nope"}, "unknown template 'nope'; choose one of plain, raw, chatml, gemma"),
])
def test_override_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(env={}, overrides=overrides)
    assert caught.value.message == message


def test_unknown_override_that_is_none_is_skipped() -> None:
    """None means "flag not given", so it is dropped before the unknown-key check."""
    assert load_node_config(env={}, overrides={"not_a_setting": None}) == NodeConfig()


def test_override_replaces_a_bad_env_value_before_parsing() -> None:
    """Overrides replace the raw env value before coercion, so a bad env value they cover is never parsed."""
    config = load_node_config(env={"FABSTIR_NODE_PORT": "junk"}, overrides={"port": 9004})
    assert config.port == 9004
    with pytest.raises(ConfigError):
        load_node_config(env={"FABSTIR_NODE_PORT": "junk"}, overrides={"seed": 1})


def test_node_config_validates_directly() -> None:
    with pytest.raises(ConfigError) as caught:
        NodeConfig(port=65536)
    assert caught.value.message == "port must be 0-65535, got 65536"
    assert NodeConfig(port=65535).port == 65535
    assert NodeConfig(port=0).port == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        NodeConfig().port = 1  # type: ignore[misc]


def test_a_network_file_as_config(tmp_path: Path) -> None:
    network = tmp_path / "devnet.json"
    network.write_text("{}", encoding="utf-8")
    assert load_node_config(network, env={}).network == str(network)


@pytest.mark.parametrize("overrides,message", [
    ({"request_read_timeout": 0}, "request_read_timeout must be more than 0 and at most 3600 seconds"),
    ({"request_read_timeout": float("nan")}, "request_read_timeout must be more than 0 and at most 3600 seconds"),
    ({"ws_idle_timeout": -1}, "ws_idle_timeout must be a non-negative number of seconds (0: no limit)"),
    ({"ws_idle_timeout": float("inf")}, "ws_idle_timeout must be a non-negative number of seconds (0: no limit)"),
    ({"max_connections_per_address": -1}, "max_connections_per_address must be non-negative (0: no cap)"),
])
def test_limit_settings_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NodeConfig(**overrides)
    assert caught.value.message == message


def test_limit_settings_from_the_environment() -> None:
    config = load_node_config(env={"FABSTIR_NODE_WS_IDLE_TIMEOUT": "0", "FABSTIR_NODE_REQUEST_READ_TIMEOUT": "2.5",
                                   "FABSTIR_NODE_MAX_CONNECTIONS_PER_ADDRESS": "8"})
    assert (config.ws_idle_timeout, config.request_read_timeout, config.max_connections_per_address) == (0.0, 2.5, 8)


@pytest.mark.parametrize("key", [
    "0xzz", "0x" + "ab" * 31, "ab" * 33, "0x" + "g" * 64, "0x" + "00" * 32,
    "0x" + "ff" * 32,  # above the secp256k1 group order
])
def test_bad_host_keys_are_refused_with_a_code_and_never_echoed(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(env={"FABSTIR_NODE_HOST_KEY": key})
    assert caught.value.code == "INVALID_HOST_KEY"
    assert key.removeprefix("0x") not in str(caught.value)


@pytest.mark.parametrize("key", ["0x" + "ab" * 32, "AB" * 32, "0X" + "01" * 32])
def test_good_host_keys_are_accepted(key: str) -> None:
    assert load_node_config(env={"FABSTIR_NODE_HOST_KEY": key}).host_key == key


GOOD_DEPLOYMENT = {name: "0x" + "11" * 20 for name in ("stake_token", "stable_token", "model_registry",
                                                       "node_registry", "host_earnings", "proof_system",
                                                       "marketplace")}


@pytest.mark.parametrize("data,bad_key", [
    ({"rpc_url": 5, "deployment": []}, "'rpc_url' must be a string"),
    ({"rpc_url": "http://x", "chain_id": 1, "deployment": []}, "'deployment' must be an object"),
    ({"rpc_url": "", "chain_id": 1, "deployment": GOOD_DEPLOYMENT}, "'rpc_url' must be a non-empty string"),
    ({"rpc_url": "http://x", "chain_id": "1", "deployment": GOOD_DEPLOYMENT}, "'chain_id' must be an integer"),
    ({"rpc_url": "http://x", "chain_id": True, "deployment": GOOD_DEPLOYMENT}, "'chain_id' must be an integer"),
    ({"rpc_url": "http://x", "deployment": GOOD_DEPLOYMENT}, "'chain_id' must be given"),
    ({"rpc_url": "http://x", "chain_id": 1, "deployment": {**GOOD_DEPLOYMENT, "marketplace": 7}},
     "'deployment.marketplace' must be a string"),
    ({"rpc_url": "http://x", "chain_id": 1, "deployment": {**GOOD_DEPLOYMENT, "dispute_window": "30"}},
     "'deployment.dispute_window' must be an integer"),
    ({"rpc_url": "http://x", "chain_id": 1, "deployment": GOOD_DEPLOYMENT, "accounts": {"host": 1}},
     "'accounts' must be an object of name -> private key strings"),
    ({"rpc_url": "http://x", "chain_id": 1, "deployment": GOOD_DEPLOYMENT, "accounts": []},
     "'accounts' must be an object"),
    ({"rpc_url": "http://x", "chain_id": 1, "deployment": GOOD_DEPLOYMENT, "anvil_pid": "12"},
     "'anvil_pid' must be an integer"),
])
def test_network_file_shape_is_checked(tmp_path: Path, data: dict[str, Any], bad_key: str) -> None:
    from fabstir.chain.network import NetworkConfig

    path = tmp_path / "net.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        NetworkConfig.load(path)
    assert caught.value.code == "INVALID_NETWORK_FILE" and bad_key in caught.value.message


def test_a_well_formed_network_file_loads(tmp_path: Path) -> None:
    from fabstir.chain.network import NetworkConfig

    path = tmp_path / "net.json"
    path.write_text(json.dumps({"preset": "anvil", "deployment": GOOD_DEPLOYMENT, "accounts": {"host": "0x01"}}),
                    encoding="utf-8")
    network = NetworkConfig.load(path)
    assert network.deployment.chain_id == 31337 and network.accounts == {"host": "0x01"}
