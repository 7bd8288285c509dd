"""The prover process never outlives its node: a node killed without closing its prover pool (SIGKILL, a crash)
leaves no EZKL process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fabstir.chain.anvil import pid_alive

ROOT = Path(__file__).resolve().parents[2]
NODE = """
import os, sys
from fabstir.zk.service import prover_pool

pool = prover_pool()
with open(sys.argv[1], "w") as out:
    out.write(str(pool.submit(os.getpid).result(timeout=120)))
os._exit(0)  # gone without closing the pool, like a node killed with SIGKILL
"""


def test_the_prover_process_exits_when_its_node_is_gone(tmp_path: Path) -> None:
    pid_file, log = tmp_path / "prover.pid", tmp_path / "node.log"
    with log.open("w") as out:  # no pipes: a leaked prover holding one would only hang the test, not fail it
        node = subprocess.run([sys.executable, "-c", NODE, str(pid_file)], stdout=out, stderr=out, timeout=180,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert node.returncode == 0, log.read_text()
    prover = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while pid_alive(prover) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = pid_alive(prover)
    if alive:  # clean up before failing: the test must not leak what it checks for
        os.kill(prover, 9)
    assert not alive, "the prover process outlived the node that started it"
