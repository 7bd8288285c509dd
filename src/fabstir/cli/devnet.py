"""``fabstir devnet up | down``: a local anvil chain with the marketplace deployed, for development.

``up`` starts anvil in the background on 127.0.0.1 (its own session, so it outlives the command;
log beside the network file), deploys and wires the contracts with dev account 0 as owner and
treasury, approves the models, mints 10,000 FAB to the hosts (dev accounts 1-3) and 10,000 USDC to
the clients (dev accounts 4-6), and writes the network file with the accounts' keys and anvil's
PID and port. Anvil mines every transaction at once and an empty block every second as well, so
chain time keeps moving and hosts can settle after the dispute window.

With ``--hosts N`` (default 2; 0 for the chain alone) ``up`` also starts the rest of a marketplace
(:mod:`fabstir.cli.devnet_market`): a discovery service and N host nodes (``host1``...) serving
``--host-model`` (default: the default model), registered at different prices, and prints how to point the
SDK, ``fabstir chat`` and ``fabstir gateway`` at it.

``status`` says which of them are still running; ``down`` stops those processes and that anvil by PID (each
only if the PID is still what it started), and removes nothing. ``--json`` prints one JSON object instead of the
text, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from fabstir.chain.anvil import AnvilProcess, is_anvil_pid, pid_alive, start_anvil, stop_anvil_pid
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Deployment, Marketplace
from fabstir.chain.deploy import ModelSpec, StepProgress, deploy_marketplace, deploy_steps
from fabstir.chain.money import format_units
from fabstir.chain.network import NetworkConfig
from fabstir.chain.tokens import mint
from fabstir.cli.output import print_json, print_table, progress_bar, table
from fabstir.errors import ConfigError
from fabstir.node.models import DEFAULT_MODEL_FILE, model_cache_dir

__all__ = ["DEFAULT_DEVNET_MODEL", "run_devnet"]

DEFAULT_DEVNET_MODEL = f"local/{DEFAULT_MODEL_FILE}"
HOSTS = (1, 2, 3)
CLIENTS = (4, 5, 6)
HOST_FAB = 10_000 * 10**18
CLIENT_USDC = 10_000 * 10**6
BLOCK_TIME = 1.0
"""Seconds between empty blocks, so chain time moves on while the chain is idle."""


def run_devnet(args: argparse.Namespace) -> int:
    """Entry point of ``fabstir devnet``; returns the exit code.

    Raises:
        ConfigError: anvil missing, port busy, network file missing or not from ``devnet up``.
    """
    if args.devnet_command == "up":
        return _up(args)
    if args.devnet_command == "status":
        return _status(args)
    return _down(args)


# --- up ---------------------------------------------------------------------------------


def _model_specs(models: list[str] | None) -> list[tuple[ModelSpec, str]]:
    """``(repo, file, sha256)`` per ``repo/file``, with where the digest came from."""
    specs: list[tuple[ModelSpec, str]] = []
    for text in models or [DEFAULT_DEVNET_MODEL]:
        repo, sep, file_name = text.rpartition("/")
        if not sep or not repo or not file_name:
            raise ConfigError(f"--model must be repo/file (e.g. {DEFAULT_DEVNET_MODEL}), got {text!r}")
        digest, source = _model_digest(repo, file_name)
        specs.append(((repo, file_name, digest), source))
    return specs


def _model_digest(repo: str, file_name: str) -> tuple[bytes, str]:
    """The sha256 of the model file when it is found locally, else a non-zero placeholder.

    Looked for: ``repo/file`` and ``file`` relative to the current directory, then the model cache.
    """
    for path in (Path(repo) / file_name, Path(file_name), model_cache_dir() / file_name):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return digest.digest(), f"sha256 of {path}"
    # the ModelRegistry rejects an all-zero digest
    return hashlib.sha256(f"fabstir-devnet-placeholder|{repo}/{file_name}".encode()).digest(), "placeholder digest"


def _refuse_running_devnet(path: Path) -> None:
    if not path.exists():
        return
    try:
        existing = NetworkConfig.load(path)
    except ConfigError:
        return  # not a network file we can read: it will be overwritten
    if existing.anvil_pid is not None and is_anvil_pid(existing.anvil_pid):
        raise ConfigError(f"{path} belongs to a devnet that is still running (anvil pid {existing.anvil_pid} on "
                          f"{existing.rpc_url}); stop it first with: fabstir devnet down --file {path}",
                          code="DEVNET_RUNNING")


def _log_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.anvil.log")


def _up(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist")
    _refuse_running_devnet(path)
    hosts = getattr(args, "hosts", 0)
    if not 0 <= hosts <= len(HOSTS):
        raise ConfigError(f"--hosts must be 0 to {len(HOSTS)} (the devnet's host accounts), got {hosts}")
    host_model = getattr(args, "host_model", None)
    checkpoint_proofs = bool(getattr(args, "checkpoint_proofs", False))
    served = f"local/{Path(host_model).name}" if host_model else DEFAULT_DEVNET_MODEL
    wanted = list(args.models or [DEFAULT_DEVNET_MODEL])
    if hosts and served not in wanted:
        wanted.append(served)
    specs = _model_specs(wanted)
    log_path = _log_path(path)
    anvil = start_anvil(args.port, block_time=BLOCK_TIME, detached=True, log_path=log_path)
    try:
        steps = deploy_steps(len(specs)) + len(HOSTS) + len(CLIENTS) + (1 if checkpoint_proofs else 0)
        with progress_bar(f"deploying the marketplace contracts on anvil (pid {anvil.pid})", steps) as advance:
            network = asyncio.run(_deploy(anvil, [spec for spec, _ in specs], args.dispute_window, advance,
                                          checkpoint_proofs=checkpoint_proofs))
        network = NetworkConfig(name="devnet", rpc_url=network.rpc_url, deployment=network.deployment,
                                accounts=network.accounts, anvil_pid=anvil.pid, anvil_port=anvil.port,
                                anvil_log=str(log_path))
        network.save(path)
    except BaseException:
        anvil.stop()
        raise
    anvil.release()  # keeps running after this command
    as_json = getattr(args, "json", False)
    if not as_json:
        _print_summary(path, network, anvil, specs)
    services: list[Any] = []
    if hosts:
        from fabstir.cli.devnet_market import start_marketplace

        lines: list[str] = []
        if not as_json:
            print(f"starting the marketplace: a discovery service and {hosts} hosts (loading models may take a "
                  "while)", flush=True)
        try:
            with progress_bar(f"starting a discovery service and {hosts} host(s)", 1 + hosts) as advance:
                def said(line: str) -> None:
                    lines.append(line)
                    advance(len(lines), 1 + hosts, line.strip().split(" ")[0])
                    if not as_json:
                        print(line, flush=True)

                services = start_marketplace(path, network.accounts, host_model, served, hosts, say=said,
                                             checkpoint_proofs=checkpoint_proofs)
        except BaseException:
            stop_anvil_pid(anvil.pid)
            raise
        if not as_json:
            _print_usage(path, network, served)
    if as_json:
        print_json(_describe(path, network, [{"name": s.name, "pid": s.pid, "url": s.url, "log": s.log}
                                             for s in services], specs))
    return 0


def _describe(path: Path, network: NetworkConfig, services: list[dict[str, Any]],
              specs: list[tuple[ModelSpec, str]] | None = None) -> dict[str, Any]:
    """The devnet as data (addresses only; the private keys stay in the network file)."""
    from eth_account import Account

    d: Deployment = network.deployment
    described: dict[str, Any] = {
        "network_file": str(path), "rpc_url": network.rpc_url, "chain_id": d.chain_id,
        "anvil": {"pid": network.anvil_pid, "port": network.anvil_port, "log": network.anvil_log},
        "contracts": {"marketplace": d.marketplace, "node_registry": d.node_registry,
                      "model_registry": d.model_registry, "host_earnings": d.host_earnings,
                      "proof_system": d.proof_system, "stake_token": d.stake_token, "stable_token": d.stable_token},
        "fee_basis_points": d.fee_basis_points, "dispute_window": d.dispute_window,
        "accounts": {name: Account.from_key(key).address for name, key in network.accounts.items()},
        "services": services,
    }
    if specs is not None:
        described["models"] = [f"{repo}/{file_name}" for (repo, file_name, _digest), _source in specs]
    return described


def _print_usage(path: Path, network: NetworkConfig, model: str) -> None:
    client = network.accounts.get("client1", "")
    print("point the SDK, the CLI and the gateway at it:")
    print(f"  SDK:      network = NetworkConfig.load('{path}'); FabstirSDK(chain=Chain.connect(network.rpc_url), "
          "deployment=network.deployment, account=Account.from_key(network.accounts['client1']))")
    print(f"  chat:     FABSTIR_CLIENT_KEY={client} fabstir chat --network {path} --model {model}")
    print(f"  gateway:  FABSTIR_CLIENT_KEY={client} fabstir gateway --network {path} --deposit 1000000000000000 "
          "--api-key sk-dev  (then OpenAI base_url http://127.0.0.1:8000/v1)")
    print(f"  hosts:    fabstir hosts --network {path} --model {model}")


async def _deploy(anvil: AnvilProcess, models: list[ModelSpec], dispute_window: int,
                  progress: StepProgress, *, checkpoint_proofs: bool = False) -> NetworkConfig:
    chain = await asyncio.to_thread(Chain.connect, anvil.rpc_url)
    try:
        owner = dev_account(0)
        done = deploy_steps(len(models))
        total = done + len(HOSTS) + len(CLIENTS) + (1 if checkpoint_proofs else 0)
        deployment = await deploy_marketplace(chain, owner, models=models, dispute_window=dispute_window,
                                              progress=lambda step, _steps, label: progress(step, total, label))
        market = Marketplace(chain, deployment)
        if checkpoint_proofs:
            from fabstir.chain.checkpoint_proofs import deploy_checkpoint_verifier

            await deploy_checkpoint_verifier(market, owner)
            done += 1
            progress(done, total, "deployed the checkpoint-proof verifier")
        for n, index in enumerate(HOSTS, 1):
            await mint(chain, owner, market.stake_token, dev_account(index).address, HOST_FAB)
            done += 1
            progress(done, total, f"minted FAB for host{n}")
        for n, index in enumerate(CLIENTS, 1):
            await mint(chain, owner, market.stable_token, dev_account(index).address, CLIENT_USDC)
            done += 1
            progress(done, total, f"minted USDC for client{n}")
    finally:
        await asyncio.to_thread(chain.close)
    return NetworkConfig(name="devnet", rpc_url=anvil.rpc_url, deployment=deployment, accounts=_accounts())


def _accounts() -> dict[str, str]:
    accounts = {"owner": _key(0)}
    accounts.update({f"host{n}": _key(index) for n, index in enumerate(HOSTS, 1)})
    accounts.update({f"client{n}": _key(index) for n, index in enumerate(CLIENTS, 1)})
    return accounts


def _key(index: int) -> str:
    return "0x" + bytes(dev_account(index).key).hex()


def _print_summary(path: Path, network: NetworkConfig, anvil: AnvilProcess,
                   specs: list[tuple[ModelSpec, str]]) -> None:
    d: Deployment = network.deployment
    print(f"devnet up: anvil (pid {anvil.pid}) at {network.rpc_url}, chain id {d.chain_id}, "
          f"block every {BLOCK_TIME:g} s; log {_log_path(path)}")
    print(f"  fee {d.fee_basis_points / 100:g}%, dispute window {d.dispute_window} s")
    for (repo, file_name, _digest), source in specs:
        print(f"  approved model {repo}/{file_name} ({source})")
    contracts = table("contract", "address", title="contracts")
    for name, address in (("marketplace", d.marketplace), ("node registry", d.node_registry),
                          ("model registry", d.model_registry), ("host earnings", d.host_earnings),
                          ("proof system", d.proof_system), ("FAB (stake)", d.stake_token), ("USDC", d.stable_token)):
        contracts.add_row(name, address)
    print_table(contracts)
    accounts = table("account", "address", "holds", title="accounts (every one also holds 10000 ETH; private keys "
                     "are in the network file, development only)")
    accounts.add_row("owner", dev_account(0).address, "treasury")
    for n, index in enumerate(HOSTS, 1):
        accounts.add_row(f"host{n}", dev_account(index).address, format_units(HOST_FAB, 18, "FAB"))
    for n, index in enumerate(CLIENTS, 1):
        accounts.add_row(f"client{n}", dev_account(index).address, format_units(CLIENT_USDC, 6, "USDC"))
    print_table(accounts)
    print(f"network file: {path}  (use --network {path} --account host1; stop with: fabstir devnet down "
          f"--file {path})")


# --- down -------------------------------------------------------------------------------


def _down(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"no network file at {path}: nothing to stop (start one with: fabstir devnet up "
                          f"--file {path})", code="NO_DEVNET")
    network = NetworkConfig.load(path)
    from fabstir.cli.devnet_market import stop_marketplace

    as_json = getattr(args, "json", False)
    lines = []
    for line in stop_marketplace(path):
        lines.append(line)
        if not as_json:
            print(f"devnet down: {line}")
    pid = network.anvil_pid
    if pid is None:
        raise ConfigError(f"{path} records no anvil PID: it was not written by 'fabstir devnet up'",
                          code="NO_DEVNET")
    where = f"pid {pid}, {network.rpc_url}"
    outcome = stop_anvil_pid(pid) if pid_alive(pid) else "not running"
    if as_json:
        print_json({"network_file": str(path), "services": lines, "anvil": {"pid": pid, "outcome": outcome}})
    elif outcome == "not anvil":
        print(f"devnet down: pid {pid} is no longer anvil; left it alone. {path} is kept.")
    elif outcome == "not running":
        print(f"devnet down: anvil ({where}) was not running; nothing to stop. {path} is kept.")
    else:
        how = "stopped" if outcome == "stopped" else "killed (it ignored SIGTERM)"
        print(f"devnet down: {how} anvil ({where}). {path} and its log are kept.")
    return 0


# --- status -----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    """What runs of the devnet ``--file`` names: anvil and each service, by PID; exit 1 when anvil is down."""
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"no network file at {path} (start a devnet with: fabstir devnet up --file {path})",
                          code="NO_DEVNET")
    network = NetworkConfig.load(path)
    if network.anvil_pid is None:
        raise ConfigError(f"{path} records no anvil PID: it was not written by 'fabstir devnet up'",
                          code="NO_DEVNET")
    from fabstir.cli.devnet_market import processes_path

    listed = processes_path(path)
    rows = json.loads(listed.read_text(encoding="utf-8")) if listed.is_file() else []
    services = [{**row, "running": pid_alive(int(row["pid"]))} for row in rows]
    anvil_running = is_anvil_pid(network.anvil_pid)
    if getattr(args, "json", False):
        described = _describe(path, network, services)
        described["anvil"]["running"] = anvil_running
        print_json(described)
        return 0 if anvil_running else 1
    listing = table("process", "pid", "state", "url", "log", title=f"devnet of {path}", right=("pid",))
    listing.add_row("anvil", str(network.anvil_pid), "running" if anvil_running else "stopped", network.rpc_url,
                    network.anvil_log or "-")
    for service in services:
        listing.add_row(service["name"], str(service["pid"]), "running" if service["running"] else "stopped",
                        service["url"], service["log"])
    print_table(listing)
    return 0 if anvil_running else 1
