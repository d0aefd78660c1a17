"""Listeners (daemon/listeners.py): which addresses a config may name, the TLS files a listener
reads (errors name the key), and the one rule for Unix socket paths (stale, live, not a socket).
Real files, real sockets, a CA made here; the daemon itself is in tests/e2e/test_tls.py."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import anyio
import pytest
from tlsca import CA, Pair

from daemon.config_fields import parse_tcp_address
from daemon.config_load import parse_config
from daemon.errors import ConfigError, ListenFailed
from daemon.listeners import TlsFiles, bind_unix, listeners_of, tls_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Pair, Pair]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CA.make(folder)
    return ca, ca.issue(folder, "server", server=True), ca.issue(folder, "client", server=False)


def listeners_config(*listeners: dict[str, object]) -> str:
    import json

    return json.dumps({"daemon": {"listeners": list(listeners)}})


# ---------------------------------------------------------------------------------------------
# Addresses


def test_beyond_loopback_without_tls_is_refused_and_says_to_add_tls() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(listeners_config({"tcp": "0.0.0.0:7443"}), "x.json5")
    msg = str(e.value)
    assert "daemon.listeners[0].tcp: must be a loopback address" in msg
    assert "add tls: {cert, key}" in msg


def test_any_address_or_host_name_is_allowed_with_tls() -> None:
    tls = {"cert": "/etc/s/server.pem", "key": "/etc/s/server.key"}
    for address, host in (
        ("0.0.0.0:7443", "0.0.0.0"),
        ("[::]:7443", "::"),
        ("10.1.2.3:7443", "10.1.2.3"),
        ("sessiond.example:7443", "sessiond.example"),
    ):
        cfg = parse_config(listeners_config({"tcp": address, "tls": tls}), "x.json5")
        lc = cfg.daemon.listeners[0]
        assert lc.tls is not None and lc.tls.cert == "/etc/s/server.pem"
        assert parse_tcp_address(address, tls=True) == (host, 7443)


def test_the_metrics_listener_stays_loopback_and_says_it_has_no_tls() -> None:
    with pytest.raises(ValueError, match="this listener has no TLS"):
        parse_tcp_address("0.0.0.0:9100")


def test_tls_on_a_unix_listener_and_missing_tls_keys_are_config_errors() -> None:
    tls = {"cert": "/c.pem", "key": "/k.pem"}
    with pytest.raises(ConfigError, match="tls applies to TCP listeners only"):
        parse_config(listeners_config({"unix": "/tmp/x.sock", "tls": tls}), "x.json5")
    with pytest.raises(ConfigError) as e:
        parse_config(listeners_config({"tcp": "0.0.0.0:1", "tls": {"cert": "/c"}}), "x.json5")
    assert "daemon.listeners[0].tls.key" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(listeners_config({"tcp": "127.0.0.1:1", "tls": {**tls, "key": ""}}), "x")
    assert "daemon.listeners[0].tls.key: must be a file path" in str(e.value)


def test_a_tls_listener_still_has_no_default_role() -> None:
    tls = {"cert": "/c.pem", "key": "/k.pem"}
    with pytest.raises(ConfigError, match="a TCP listener has no default role"):
        parse_config(
            listeners_config({"tcp": "0.0.0.0:1", "tls": tls, "role": "adapter"}), "x.json5"
        )


# ---------------------------------------------------------------------------------------------
# TLS files


def files(pair: Pair, client_ca: Path | None = None) -> TlsFiles:
    return TlsFiles(pair.cert, pair.key, client_ca, "daemon.listeners[1].tls")


def test_a_good_pair_makes_a_server_context_and_client_ca_requires_client_certs(
    pki: tuple[CA, Pair, Pair],
) -> None:
    ca, server, _ = pki
    plain = tls_context(files(server))
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = tls_context(files(server, ca.cert))
    assert mutual.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("which", ["cert", "key", "clientCa"])
def test_a_missing_file_is_a_config_error_naming_its_key(
    pki: tuple[CA, Pair, Pair], tmp_path: Path, which: str
) -> None:
    _, server, _ = pki
    gone = tmp_path / "gone.pem"
    f = {
        "cert": TlsFiles(gone, server.key, None, "daemon.listeners[1].tls"),
        "key": TlsFiles(server.cert, gone, None, "daemon.listeners[1].tls"),
        "clientCa": TlsFiles(server.cert, server.key, gone, "daemon.listeners[1].tls"),
    }[which]
    with pytest.raises(ConfigError) as e:
        tls_context(f)
    assert str(e.value) == (
        f"daemon.listeners[1].tls.{which}: cannot read {gone}: No such file or directory"
    )


def test_a_key_of_another_certificate_or_a_file_that_is_not_pem_is_named(
    pki: tuple[CA, Pair, Pair], tmp_path: Path
) -> None:
    _, server, client = pki
    with pytest.raises(ConfigError, match=r"^daemon.listeners\[1\].tls.key: .* does not fit"):
        tls_context(TlsFiles(server.cert, client.key, None, "daemon.listeners[1].tls"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^daemon.listeners\[1\].tls.cert: .* no PEM"):
        tls_context(TlsFiles(junk, server.key, None, "daemon.listeners[1].tls"))


def test_listeners_of_reads_the_files_at_start_up(pki: tuple[CA, Pair, Pair]) -> None:
    ca, server, _ = pki
    tls = {"cert": str(server.cert), "key": str(server.key), "clientCa": str(ca.cert)}
    cfg = parse_config(
        listeners_config({"unix": "/tmp/a.sock"}, {"tcp": "0.0.0.0:0", "tls": tls}), "x"
    )
    specs = listeners_of(cfg)
    assert specs[1].name == "tls:0.0.0.0:0" and specs[1].principal is None
    assert specs[1].tls is not None and specs[1].tls.files.client_ca == ca.cert
    broken = parse_config(
        listeners_config(
            {"unix": "/tmp/a.sock"}, {"tcp": "0.0.0.0:0", "tls": {**tls, "key": "/nope.key"}}
        ),
        "x",
    )
    with pytest.raises(ConfigError, match=r"^daemon.listeners\[1\].tls.key: cannot read"):
        listeners_of(broken)


# ---------------------------------------------------------------------------------------------
# Unix socket paths (daemon.socket and daemon.listeners alike)


def test_a_stale_socket_is_replaced_and_the_mode_is_set(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody answers: what a killed daemon leaves

    async def main() -> None:
        lst = await bind_unix(path, 0o640)
        try:
            assert path.stat().st_mode & 0o777 == 0o640
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(str(path))
        finally:
            await lst.aclose()

    anyio.run(main)


def test_a_live_socket_or_a_file_at_the_path_stops_start_up_untouched(tmp_path: Path) -> None:
    live = tmp_path / "live.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(live))
    other.listen()
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    try:
        with pytest.raises(ListenFailed, match="another process is serving on it"):
            anyio.run(bind_unix, live, 0o660)
        with pytest.raises(ListenFailed, match="it exists and is not a socket"):
            anyio.run(bind_unix, plain, 0o660)
        assert live.exists() and plain.read_text() == "keep me"
    finally:
        other.close()
