"""A local S3-compatible server for the object-storage backup tests: moto's standalone server
over real HTTP on loopback, with fake credentials in the environment (daemons and commands the
tests start inherit them)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

BUCKET = "sessiond-test"


@dataclass
class S3Server:
    port: int
    server: object | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        s = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        s.start()
        self.server = s

    def stop(self) -> None:
        """Unreachable from now on (the objects stay: moto keeps them in this process)."""
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]
            self.server = None

    def client(self) -> object:
        import boto3  # type: ignore[import-untyped]

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    srv = S3Server(free_port())
    srv.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", srv.endpoint)
    srv.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()
