"""Remote adapters over TLS (issue 19): a TCP listener beyond loopback with `tls`, against the
real daemon, with a CA, server and client certificates made in the test.

One daemon serves two TLS listeners: on 0.0.0.0 (reached here through 127.0.0.1) with a server
certificate only, and on 127.0.0.1 with `clientCa` (mutual TLS). Tokens are needed on both.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tlsca import CA, Pair

from daemon.client import Client, ConnectError, RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env, ingest_params, short_workdir

ADMIN = "ops-tls-token-0123456789abcdef"
ADAPTER = "adapter-tls-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tokens() -> dict[str, Any]:
    return {
        "tokens": [
            {"name": "ops", "token": ADMIN, "role": "admin"},
            {"name": "tg", "token": ADAPTER, "role": "adapter", "agents": ["main"]},
        ]
    }


def tls_of(pair: Pair, client_ca: Path | None = None) -> dict[str, str]:
    out = {"cert": str(pair.cert), "key": str(pair.key)}
    if client_ca is not None:
        out["clientCa"] = str(client_ca)
    return out


@dataclass
class Remote:
    daemon: Daemon
    ca: CA
    rogue: CA  # a CA nobody configured
    client: Pair  # signed by ca
    rogue_client: Pair
    open_port: int  # 0.0.0.0, server certificate only
    mutual_port: int  # 127.0.0.1, clientCa

    def tls(self, port: int, **kw: Any) -> Client:
        kw.setdefault("ca", self.ca.cert)
        return Client(f"tls://127.0.0.1:{port}", timeout=30, **kw)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.daemon.logs() if e.get("event") == name]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    workdir = short_workdir(tmp_path_factory.mktemp("tls"))
    pki = workdir / "pki"
    ca = CA.make(pki)
    rogue = CA.make(pki / "rogue", "rogue CA")
    server = ca.issue(pki, "server", server=True)
    open_port, mutual_port = free_port(), free_port()
    cfg = {
        "daemon": {
            "listeners": [
                {"tcp": f"0.0.0.0:{open_port}", "tls": tls_of(server)},
                {"tcp": f"127.0.0.1:{mutual_port}", "tls": tls_of(server, ca.cert)},
            ]
        },
        "auth": tokens(),
    }
    d = Daemon(workdir, config=cfg)
    try:
        d.start()
        yield Remote(
            d,
            ca,
            rogue,
            ca.issue(pki, "adapter", server=False),
            rogue.issue(pki / "rogue", "intruder", server=False),
            open_port,
            mutual_port,
        )
    finally:
        d.cleanup()
    assert "Traceback" not in d.output()


def test_an_adapter_beyond_loopback_ingests_over_tls_with_its_token(remote: Remote) -> None:
    with remote.tls(remote.open_port, token=ADAPTER) as c:
        ack = c.call("message.ingest", ingest_params("41", "over the wire"))
        assert ack["duplicate"] is False
    with remote.daemon.client() as admin:
        page = admin.call("sessions.history", {"sessionKey": ack["sessionKey"]})
    texts = [e["message"]["content"][0]["text"] for e in page["entries"]]
    assert texts == ["over the wire"]
    listening = [e for e in remote.events("server.listening") if e.get("tls")]
    assert {e["address"] for e in listening} == {
        f"0.0.0.0:{remote.open_port}",
        f"127.0.0.1:{remote.mutual_port}",
    }


def test_tls_still_needs_a_token(remote: Remote) -> None:
    with remote.tls(remote.open_port) as c, pytest.raises(RpcError) as e:
        c.call("status", {})
    assert e.value.code == 1001


def test_a_plain_tcp_client_on_the_tls_port_is_told_and_the_daemon_goes_on(
    remote: Remote,
) -> None:
    with pytest.raises(RpcError) as e:
        Client(f"tcp://127.0.0.1:{remote.open_port}", timeout=30, token=ADAPTER)
    assert e.value.code == -32600
    assert "speaks TLS: connect with tls://HOST:PORT" in e.value.message
    # Bytes that look like a handshake but are not one: closed, nothing else happens.
    with socket.create_connection(("127.0.0.1", remote.open_port), timeout=30) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05hello" + b"\n" * 100)
        raw.shutdown(socket.SHUT_WR)
        while raw.recv(4096):
            pass
    with remote.tls(remote.open_port, token=ADMIN) as c:
        assert c.call("status", {})["connections"] >= 1
    assert remote.daemon.running


def test_a_client_that_does_not_trust_the_certificate_is_told_why(remote: Remote) -> None:
    with pytest.raises(ConnectError, match="its certificate is not trusted"):
        remote.tls(remote.open_port, token=ADMIN, ca=remote.rogue.cert)


def test_client_ca_refuses_a_client_without_a_certificate_or_with_a_stranger(
    remote: Remote,
) -> None:
    with pytest.raises(ConnectError, match="asks for a client certificate"):
        remote.tls(remote.mutual_port, token=ADMIN)
    stranger = remote.rogue_client
    with pytest.raises(ConnectError, match="asks for a client certificate"):
        remote.tls(remote.mutual_port, token=ADMIN, cert=stranger.cert, key=stranger.key)
    mine = remote.client
    with remote.tls(remote.mutual_port, token=ADMIN, cert=mine.cert, key=mine.key) as c:
        assert c.call("status", {})["connections"] >= 1


def test_handshake_failures_are_logged_once_per_streak(remote: Remote) -> None:
    with remote.tls(remote.open_port, token=ADMIN) as c:  # ends any streak before this test
        c.call("status", {})
    before = len(remote.events("tls.handshake_failed"))
    for _ in range(3):
        with pytest.raises(RpcError):
            Client(f"tcp://127.0.0.1:{remote.open_port}", timeout=30, token=ADMIN)
    with remote.tls(remote.open_port, token=ADMIN) as c:
        c.call("status", {})
    failed = remote.events("tls.handshake_failed")[before:]
    assert len(failed) == 1
    assert failed[0]["reason"] == "plain text on a TLS listener"
    assert failed[0]["listener"] == f"tls:0.0.0.0:{remote.open_port}"
    ended = remote.events("tls.handshake_failures_ended")
    assert ended[-1]["failed"] == 3


def test_a_stalled_handshake_holds_only_its_own_connection(remote: Remote) -> None:
    with socket.create_connection(("127.0.0.1", remote.open_port), timeout=60) as stalled:
        stalled.sendall(b"\x16")  # the first byte of a handshake, then nothing
        with remote.tls(remote.open_port, token=ADAPTER) as c:
            c.call("message.ingest", ingest_params("42", "while another stalls"))
        # The hello timeout (daemon.limits.helloTimeoutSeconds) closes it.
        assert stalled.recv(4096) == b""


def test_the_cli_reaches_a_tls_listener_with_a_token_file_and_a_ca(
    remote: Remote, tmp_path: Path
) -> None:
    token_file = tmp_path / "ops.token"
    token_file.write_text(ADMIN + "\n")
    address = f"tls://127.0.0.1:{remote.open_port}"
    token = ["--token-file", str(token_file)]
    ca = ["--tls-ca", str(remote.ca.cert)]
    r = sessiond("status", "--socket", address, *token, "--json", *ca)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["connections"] >= 1
    mine = remote.client
    mutual = f"tls://127.0.0.1:{remote.mutual_port}"
    own = ["--tls-cert", str(mine.cert), "--tls-key", str(mine.key)]
    r = sessiond(*ca, *own, "status", "--socket", mutual, *token)  # flags before the command
    assert r.returncode == 0, r.stderr
    r = sessiond("status", "--socket", mutual, *token, *ca)
    assert r.returncode == 1 and "--tls-cert" in r.stderr and "Traceback" not in r.stderr
    r = sessiond("status", "--socket", f"tcp://127.0.0.1:{remote.open_port}", "--tls-ca", "x")
    assert r.returncode == 2 and "go with --socket tls://" in r.stderr


def sessiond(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
    )


# ---------------------------------------------------------------------------------------------
# Certificates on disk: start-up errors, renewal on reload


def test_a_missing_certificate_stops_start_up_naming_the_key(
    launch: Launch, tmp_path: Path
) -> None:
    ca = CA.make(tmp_path / "pki")
    server = ca.issue(tmp_path / "pki", "server", server=True)
    tls = {**tls_of(server), "cert": str(tmp_path / "pki" / "gone.pem")}
    d = launch(
        {"daemon": {"listeners": [{"tcp": "0.0.0.0:0", "tls": tls}]}, "auth": tokens()},
        start=False,
    )
    assert d.spawn().wait(timeout=60) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert "daemon.listeners[0].tls.cert: cannot read" in err and "gone.pem" in err
    assert "Traceback" not in err


def test_a_renewed_certificate_serves_new_connections_after_a_reload(
    launch: Launch, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    old_ca, new_ca = CA.make(pki / "old"), CA.make(pki / "new", "renewed CA")
    live = old_ca.issue(pki, "server", server=True)  # the configured paths
    port = free_port()
    d = launch(
        {
            "daemon": {"listeners": [{"tcp": f"127.0.0.1:{port}", "tls": tls_of(live)}]},
            "auth": tokens(),
        }
    )
    address = f"tls://127.0.0.1:{port}"
    with Client(address, timeout=30, token=ADMIN, ca=old_ca.cert) as before:
        renewed = new_ca.issue(pki / "new", "server", server=True)
        live.cert.write_bytes(renewed.cert.read_bytes())
        live.key.write_bytes(renewed.key.read_bytes())
        assert d.call("config.reload", {})["reloaded"] is True
        assert before.call("status", {})["connections"] >= 1  # open connections go on
    with Client(address, timeout=30, token=ADMIN, ca=new_ca.cert) as after:
        after.call("status", {})
    with pytest.raises(ConnectError, match="not trusted"):
        Client(address, timeout=30, token=ADMIN, ca=old_ca.cert)
    # A key file that no longer fits rejects the reload; the running certificate stays.
    live.key.write_bytes(old_ca.issue(pki, "other", server=True).key.read_bytes())
    res = d.call("config.reload", {})
    assert res["reloaded"] is False and "daemon.listeners[0].tls.key" in res["error"]
    with Client(address, timeout=30, token=ADMIN, ca=new_ca.cert) as again:
        again.call("status", {})
