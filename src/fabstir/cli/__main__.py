"""``python -m fabstir.cli``."""

from fabstir.cli.main import run

run()
