#!/usr/bin/env python3
"""Write contracts/Halo2Verifier.sol: the EZKL verifier of the checkpoint circuit (issue 14 P3).

Usage:
    python scripts/build_zk_verifier.py            # build the keys if needed, write the Solidity
    python scripts/build_zk_verifier.py --check    # exit 1 if the committed file differs

Then run ``python scripts/build_contracts.py`` to compile it. The verifying key depends on the circuit and the
committed SRS (src/fabstir/zk/data), so the file changes only when one of them does. Note: ezkl's
create_evm_verifier tries (and fails, offline) to download solc after writing the file; nothing else is fetched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fabstir.zk.evm import solidity_verifier
from fabstir.zk.keys import ensure_keys

TARGET = Path(__file__).resolve().parents[1] / "contracts" / "Halo2Verifier.sol"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed verifier is stale")
    parser.add_argument("--cache", default=None, help="keys cache directory (default: $FABSTIR_ZK_CACHE)")
    args = parser.parse_args(argv)
    text = solidity_verifier(ensure_keys(args.cache, progress=print))
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"build_zk_verifier: {TARGET} is stale; run scripts/build_zk_verifier.py", file=sys.stderr)
            return 1
        print("build_zk_verifier: up to date")
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"build_zk_verifier: wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
