"""Secure by default (issue 12, item 4): each insecure default is refused, or fixed, here without a server.

Non-loopback addresses are from TEST-NET-1 (192.0.2.0/24, RFC 5737): nothing there answers, and no test
connects to one; the checks refuse before any connection is tried.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
from pathlib import Path

import pytest

from cloud_service.cli import build_parser as cloud_parser
from cloud_service.cli import config_from_args as cloud_config_from_args
from cloud_service.config import DEFAULT_LISTEN, CloudConfig, TlsConfig, check_listen
from edge_node.__main__ import build_parser as edge_parser
from edge_node.__main__ import main as edge_main
from edge_node.adapters.cloud_client import CloudClientConfig, call_metadata, open_channel
from edge_node.adapters.mqtt_agent import AgentConfig
from edge_node.cli.agent import agent_config_from_args
from edge_node.cli.run import config_from_args as run_config_from_args
from edge_node.daemon.outbox import create_key, load_key
from fleetctl.__main__ import main as fleetctl_main
from fleetctl.certs import CertPlan, init_certs
from fleetctl.cli import build_parser as fleetctl_parser
from fleetctl.fleet.commands import settings_from
from fleetctl.fleet.store import connect_redis
from shared.cli import redis_url
from shared.errors import UserError
from shared.fsutil import SECRET_MODE, atomic_write, read_secret
from shared.mqtt import MqttSettings
from shared.net import is_loopback, redact_url, target_host, url_has_password
from shared.signing import init_keypair, load_private_key
from testkit.servers import free_port

REMOTE = "192.0.2.10"
PASSWORD = "s3cret-Pw-42"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def pubkey(tmp_path: Path) -> Path:
    return init_keypair(tmp_path / "keys")[1]


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    path.write_bytes(b"")  # only its existence is checked before the daemon would start
    return path


# ---------------------------------------------------------------------------------------------- shared.net


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "localhost.", "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", REMOTE, "128.0.0.1", "cloud", "example.com",
                                  "localhost.example.com", "127.0.0.1.nip.io", ""])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(("target", "host"), [
    ("127.0.0.1:50051", "127.0.0.1"), ("[::1]:50051", "::1"), ("dns:///cloud:443", "cloud"),
    ("dns://8.8.8.8/localhost:50051", "localhost"), ("ipv4:127.0.0.1:1", "127.0.0.1"),
    ("unix:/run/cloud.sock", "localhost"), ("cloud", "cloud"),
])
def test_grpc_target_hosts(target: str, host: str) -> None:
    assert target_host(target) == host


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://:{PASSWORD}@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
    (f"rediss://fleet:{PASSWORD}@redis:6380/1", "rediss://***@redis:6380/1"),
    (f"redis://:p@ss{PASSWORD}@redis/0", "redis://***@redis/0"),  # an '@' in the password
    (f"redis://redis:6379/0?password={PASSWORD}&db=1", "redis://redis:6379/0?password=***&db=1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_redact_url_hides_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert url_has_password(url) == (url != shown)


# ---------------------------------------------------------------------------------------------- operator key


def test_edge_run_with_mqtt_refuses_to_start_without_an_operator_key(
        tmp_path: Path, source: Path, pubkey: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # keys/operator.pub in the working directory used to be taken implicitly; it must not be any more.
    monkeypatch.chdir(tmp_path)
    assert Path("keys/operator.pub").is_file()
    argv = ["run", "--source", str(source), "--device-id", "dev-1", "--mqtt", "127.0.0.1:1883",
            "--state-dir", str(tmp_path / "state"), "--model-dir", str(tmp_path / "no-model")]
    assert edge_main(argv) == 2
    err = capsys.readouterr().err
    assert "--mqtt needs --operator-pubkey" in err and "Traceback" not in err
    # With the key named, the control plane insists on signatures.
    config = run_config_from_args(edge_parser().parse_args([*argv, "--operator-pubkey", str(pubkey)]))
    assert config.agent is not None and config.agent.require_signed and config.agent.operator_pubkey == pubkey
    assert config.operator_pubkey == pubkey
    missing = edge_parser().parse_args([*argv, "--operator-pubkey", str(tmp_path / "nope.pub")])
    with pytest.raises(UserError, match="no such file"):
        run_config_from_args(missing)


def test_edge_agent_needs_a_key_unless_the_lab_flag_is_given(
        tmp_path: Path, pubkey: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["agent", "--fleet", "lab", "--device", "dev-1", "--state-dir", str(tmp_path / "agent")]
    assert edge_main(base) == 2
    assert "give --pubkey" in capsys.readouterr().err
    lab = agent_config_from_args(edge_parser().parse_args([*base, "--allow-unsigned"]), env={})
    assert not lab.require_signed and lab.operator_pubkey is None
    for extra in (["--pubkey", str(pubkey)], ["--pubkey", str(pubkey), "--allow-unsigned"]):
        config = agent_config_from_args(edge_parser().parse_args([*base, *extra]), env={})
        assert config.require_signed and config.operator_pubkey == pubkey  # a given key is always insisted on
    with pytest.raises(ValueError, match="unsigned desired state must be refused"):
        AgentConfig(fleet="lab", device_id="d", state_dir=tmp_path, operator_pubkey=pubkey, require_signed=False)


# ---------------------------------------------------------------------------------------------- TLS off loopback


def _run_args(source: Path, tmp_path: Path, *extra: str) -> argparse.Namespace:
    token = tmp_path / "token"
    token.write_text("dev-1.secret\n")
    token.chmod(0o600)
    return edge_parser().parse_args(["run", "--source", str(source), "--device-id", "dev-1", "--token-file",
                                     str(token), "--state-dir", str(tmp_path / "state"), *extra])


def test_edge_run_refuses_plaintext_grpc_and_a_clear_token_off_loopback(source: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a channel opens\n")
    with pytest.raises(UserError, match=r"192\.0\.2\.10 is not a loopback address.*--tls-ca.*--insecure"):
        run_config_from_args(_run_args(source, tmp_path, "--cloud", f"{REMOTE}:50051"))
    # --insecure allows plaintext, but never the device token in clear.
    with pytest.raises(UserError, match="token is never sent in clear"):
        run_config_from_args(_run_args(source, tmp_path, "--cloud", f"{REMOTE}:50051", "--insecure"))
    for extra in (["--cloud", f"{REMOTE}:50051", "--tls-ca", str(ca)], ["--cloud", "127.0.0.1:50051"],
                  ["--cloud", "localhost:50051"]):
        assert run_config_from_args(_run_args(source, tmp_path, *extra)).cloud is not None


def test_edge_run_refuses_plaintext_mqtt_off_loopback(source: Path, tmp_path: Path, pubkey: Path) -> None:
    mqtt = ["--mqtt", f"{REMOTE}:1883", "--operator-pubkey", str(pubkey)]
    with pytest.raises(UserError, match=r"--mqtt 192\.0\.2\.10:1883.*--mqtt-tls-ca.*--insecure"):
        run_config_from_args(_run_args(source, tmp_path, *mqtt))
    for extra in (["--insecure"], ["--mqtt-tls-ca", str(tmp_path / "ca.pem")]):
        config = run_config_from_args(_run_args(source, tmp_path, *mqtt, *extra))
        assert config.agent is not None and config.agent.host == REMOTE


def test_agent_worker_and_fleetctl_refuse_plaintext_mqtt_off_loopback(tmp_path: Path, pubkey: Path) -> None:
    agent = ["agent", "--fleet", "lab", "--device", "d", "--state-dir", str(tmp_path), "--pubkey", str(pubkey),
             "--broker", f"{REMOTE}:1883"]
    worker = ["worker", "--mqtt-host", REMOTE]
    status = ["status", "--no-redis", "--broker", f"{REMOTE}:1883"]
    checks = [
        (lambda a: agent_config_from_args(edge_parser().parse_args(a), env={}), agent, "--tls-ca"),
        (lambda a: cloud_config_from_args(cloud_parser().parse_args(a)), worker, "--mqtt-tls-ca"),
        (lambda a: settings_from(fleetctl_parser().parse_args(a)), status, "--tls-ca"),
    ]
    for build, argv, flag in checks:
        with pytest.raises(UserError, match=rf"not a loopback address.*{flag}.*--insecure"):
            build(argv)
        build([*argv, "--insecure"])
        build([*argv, flag, str(tmp_path / "ca.pem")])


def test_the_client_factories_enforce_the_rules_for_every_caller() -> None:
    # shared.mqtt: every MQTT client of the fleet (device, worker, fleetctl, benches) is made from these settings.
    with pytest.raises(UserError, match="not a loopback address"):
        MqttSettings(host=REMOTE)
    assert MqttSettings(host=REMOTE, insecure=True).insecure and MqttSettings(host="::1").host == "::1"
    # cloud_client: the one gRPC channel factory (escalations and model downloads).
    with_token = CloudClientConfig(f"{REMOTE}:50051", "dev-1", "dev-1.secret", insecure=True)
    with pytest.raises(UserError, match="not a loopback address"):
        open_channel(f"{REMOTE}:50051")
    with pytest.raises(UserError, match="token is never sent in clear"):
        open_channel(f"{REMOTE}:50051", with_token)
    with pytest.raises(UserError, match="token is never sent in clear"):
        call_metadata(with_token, f"{REMOTE}:50051")
    open_channel(f"{REMOTE}:50051", CloudClientConfig(f"{REMOTE}:50051", "dev-1", "", insecure=True)).close()
    assert call_metadata(with_token, "127.0.0.1:50051") == (("authorization", "Bearer dev-1.secret"),)


# ---------------------------------------------------------------------------------------------- serve


def test_serve_defaults_to_loopback_and_refuses_plaintext_elsewhere(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cloud_parser().parse_args(["serve"]).listen == DEFAULT_LISTEN == "127.0.0.1:50051"
    checkpoint = tmp_path / "any.pt"  # never loaded: the address is refused first
    checkpoint.write_bytes(b"x")
    from cloud_service.__main__ import main as cloud_main

    assert cloud_main(["serve", "--listen", "0.0.0.0:0", "--model", str(checkpoint), "--no-auth"]) == 2
    err = capsys.readouterr().err
    assert "--listen 0.0.0.0:0 is not a loopback address" in err and "--tls-cert" in err
    with pytest.raises(UserError, match="not a loopback address"):
        check_listen(CloudConfig(), "[::]:50051")


def test_serve_refuses_plaintext_rest_off_loopback_before_anything_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud_service.__main__ import main as cloud_main

    checkpoint = tmp_path / "any.pt"  # never loaded: were the address checked after the model, loading it would fail
    checkpoint.write_bytes(b"x")
    assert cloud_main(["serve", "--http", "0.0.0.0:8080", "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "--http 0.0.0.0:8080 is not a loopback address" in err and "checkpoint" not in err
    assert cloud_main(["serve", "--http", "nonsense", "--model", str(checkpoint)]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_serve_warns_when_plaintext_or_auth_off_on_the_network(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    check_listen(CloudConfig(insecure=True), "0.0.0.0:50051")
    assert "--insecure: serving plaintext gRPC on 0.0.0.0:50051" in caplog.text
    caplog.clear()
    check_listen(CloudConfig(tls=TlsConfig(Path("s.pem"), Path("s.key")), auth=False), "10.1.2.3:50051")
    assert "--no-auth on 10.1.2.3:50051" in caplog.text and "plaintext" not in caplog.text
    caplog.clear()
    check_listen(CloudConfig(auth=False), "127.0.0.1:50051")
    assert caplog.text == ""


# ---------------------------------------------------------------------------------------------- secrets off argv


def test_redis_url_from_a_file_the_environment_or_argv_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    url_file = tmp_path / "redis-url"
    atomic_write(url_file, (url + "\n").encode(), mode=SECRET_MODE)
    parsers = [(cloud_parser(), ["serve"], "CLOUD_REDIS_URL"), (cloud_parser(), ["worker"], "CLOUD_REDIS_URL"),
               (fleetctl_parser(), ["device", "add", "d"], "CLOUD_REDIS_URL"),
               (fleetctl_parser(), ["status"], "FLEET_REDIS_URL")]
    caplog.set_level(logging.WARNING)
    for parser, argv, env in parsers:
        assert redis_url(parser.parse_args([*argv, "--redis-url-file", str(url_file)]), {}) == url
        assert redis_url(parser.parse_args(argv), {env: url}) == url
        assert caplog.text == ""  # neither a file nor the environment is worth a warning
        assert redis_url(parser.parse_args([*argv, "--redis", url]), {}) == url
        assert "password on the command line" in caplog.text and PASSWORD not in caplog.text
        caplog.clear()
        with pytest.raises(UserError, match="not both"):
            redis_url(parser.parse_args([*argv, "--redis", url, "--redis-url-file", str(url_file)]), {})
    assert redis_url(fleetctl_parser().parse_args(["status"]), {}) == "redis://127.0.0.1:6379/0"
    config = cloud_config_from_args(cloud_parser().parse_args(["serve", "--redis-url-file", str(url_file)]))
    assert config.redis_url == url and PASSWORD not in repr(config)


def test_redis_errors_never_show_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # a closed port: the connection is refused
    assert fleetctl_main(["device", "add", "dev-1", "--redis", url]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://***@127.0.0.1:" in err and PASSWORD not in err
    with pytest.raises(UserError) as exc:
        connect_redis(url)
    assert "redis://***@127.0.0.1" in str(exc.value) and PASSWORD not in str(exc.value)
    with pytest.raises(UserError) as exc:
        connect_redis(f"redis://:{PASSWORD}@127.0.0.1:notaport/0")
    assert "bad Redis URL" in str(exc.value) and PASSWORD not in str(exc.value)


# ---------------------------------------------------------------------------------------------- file modes


def test_key_files_are_0600_also_when_force_replaces_a_looser_one(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert fleetctl_main(["keys", "init", "--dir", str(keys)]) == 0
    assert _mode(keys / "operator.key") == 0o600
    (keys / "operator.key").chmod(0o644)
    assert fleetctl_main(["keys", "init", "--dir", str(keys), "--force"]) == 0
    assert _mode(keys / "operator.key") == 0o600
    certs = tmp_path / "certs"
    assert fleetctl_main(["certs", "init", "--dir", str(certs), "--devices", "edge-1"]) == 0
    for key in ("ca.key", "server.key", "devices/edge-1.key"):
        (certs / key).chmod(0o644)
    assert fleetctl_main(["certs", "init", "--dir", str(certs), "--devices", "edge-1", "--force"]) == 0
    for key in ("ca.key", "server.key", "devices/edge-1.key"):
        assert _mode(certs / key) == 0o600, key


def test_atomic_write_sets_the_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old")
    path.chmod(0o644)
    old = os.umask(0)  # a umask that would leave a plain create 0666
    try:
        atomic_write(path, b"new", mode=SECRET_MODE)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new" and _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left behind
    create_key(tmp_path / "outbox.key")
    assert _mode(tmp_path / "outbox.key") == 0o600


def test_loading_a_secret_others_can_read_warns_without_showing_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    secret = tmp_path / "token"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    assert read_secret(secret, "token file") == PASSWORD
    assert caplog.text == ""
    secret.chmod(0o640)
    assert read_secret(secret, "token file") == PASSWORD
    assert f"token file {secret} is readable by group or others (mode 0640)" in caplog.text
    assert PASSWORD not in caplog.text
    caplog.clear()
    priv, _ = init_keypair(tmp_path / "keys")
    create_key(tmp_path / "outbox.key")
    for path in (priv, tmp_path / "outbox.key"):
        path.chmod(0o644)
    load_private_key(priv)
    load_key(tmp_path / "outbox.key")
    assert "operator private key" in caplog.text and "outbox key" in caplog.text
    init_certs(CertPlan(tmp_path / "certs", devices=("dev-1",)))
    device_key = tmp_path / "certs" / "devices" / "dev-1.key"
    device_key.chmod(0o644)
    mtls = CloudClientConfig("127.0.0.1:1", "dev-1", "", tls_ca=tmp_path / "certs" / "ca.pem",
                             tls_cert=device_key.with_suffix(".pem"), tls_key=device_key)
    open_channel(mtls.target, mtls).close()  # a channel connects lazily: nothing is dialled here
    assert f"TLS client key {device_key} is readable" in caplog.text
