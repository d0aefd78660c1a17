"""The metrics listener's pure parts (daemon/metrics.py) and its config key: what is accepted,
what each request is answered, and which error labels the rejection counter uses."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from daemon.config_load import parse_config
from daemon.errors import ConfigError
from daemon.metrics import ERROR_NAMES, encode, parse_request_line, route
from daemon.reload import plan_reload


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9464", "[::1]:9464", "localhost:9464", "127.0.0.2:0"]
)
def test_a_loopback_metrics_address_is_accepted(address: str) -> None:
    assert parse_config(f'{{daemon: {{metrics: "{address}"}}}}').daemon.metrics == address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0:9464", "must be a loopback address"),
        ("192.168.1.5:9464", "must be a loopback address"),
        ("9464", 'must be "HOST:PORT"'),
        ("127.0.0.1:70000", "port must be between 0 and 65535"),
    ],
)
def test_any_other_metrics_address_is_refused_naming_the_key(address: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f'{{daemon: {{metrics: "{address}"}}}}', "c.json5")
    assert "daemon.metrics" in str(e.value) and why in str(e.value), str(e.value)


def test_metrics_are_off_by_default_and_a_change_waits_for_a_restart() -> None:
    running = parse_config("{}")
    assert running.daemon.metrics is None
    plan = plan_reload(running, parse_config('{daemon: {metrics: "127.0.0.1:9464"}}'))
    assert plan.restart_required == ("daemon.metrics",)
    assert plan.config.daemon.metrics is None  # keeps its running value until then


def test_requests_are_answered_by_path_and_method() -> None:
    reg = CollectorRegistry(auto_describe=False)
    assert route("GET", "/healthz", reg, None).status == 200
    sick = route("GET", "/healthz?verbose=1", reg, "storage unavailable: journal sync failed")
    assert (sick.status, sick.body) == (
        503,
        b"unavailable: storage unavailable: journal sync failed\n",
    )
    assert route("GET", "/metrics", reg, "anything").status == 200  # metrics also when sick
    assert route("GET", "/", reg, None).status == 404
    post = route("POST", "/metrics", reg, None)
    assert (post.status, post.allow) == (405, "GET, HEAD")


def test_head_gets_the_headers_without_the_body() -> None:
    resp = route("GET", "/healthz", CollectorRegistry(auto_describe=False), None)
    full, head = encode(resp, False), encode(resp, True)
    assert full.startswith(head) and full[len(head) :] == b"ok\n"
    assert b"Content-Length: 3\r\n" in head and head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
        (b"HEAD /healthz HTTP/1.0\n\n", ("HEAD", "/healthz")),
        (b"GET /metrics\r\n\r\n", None),  # HTTP/0.9
        (b"\xff\xfe / HTTP/1.1\r\n\r\n", None),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", None),
    ],
)
def test_the_request_line_is_parsed_or_refused(head: bytes, parsed: tuple[str, str] | None) -> None:
    assert parse_request_line(head) == parsed


def test_every_error_code_has_its_own_label() -> None:
    assert ERROR_NAMES[1004] == "storage_unavailable"
    assert ERROR_NAMES[-32602] == "invalid_params"
    assert ERROR_NAMES[-32603] == "internal_error"
    assert len(set(ERROR_NAMES.values())) == len(ERROR_NAMES)
