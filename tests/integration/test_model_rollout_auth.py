"""Model rollout from the real cloud: FetchModel of the real edge artifact (models/tiny.en-int8) from a real
`create_server` with device auth (a token registered in a real Redis) and TLS (certificates from `fleetctl certs
init`). The stand-in servicer the other rollout tests use (testkit.fleet.ArtifactServicer) asks for no token and
speaks plaintext; this is what a deployed device meets.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_service.asr.model import AsrModel
from cloud_service.config import TlsConfig
from edge_node.adapters.cloud_client import CloudClientConfig
from edge_node.adapters.model_update import ModelUpdater, UpdaterConfig
from edge_node.core.escalation_policy import EscalationPolicy
from edge_node.daemon.hotswap import HotSwap
from edge_node.daemon.live_params import Tunables
from edge_node.engine.config import EdgeConfig
from edge_node.engine.transcriber import EdgeTranscriber
from fleetctl.__main__ import main as fleetctl_main
from fleetctl.certs import CertPlan, init_certs
from fleetctl.fleet.mqtt_io import BrokerSettings, collect_retained
from shared.errors import UserError
from shared.fleet_schema import DesiredModel, DeviceState, FetchInfo, parse_payload, state_topic
from shared.fsutil import SECRET_MODE, atomic_write
from shared.manifest import SIGNATURE_NAME, read_manifest, verify_artifact
from shared.signing import load_public_key
from testkit.escalation import ROOT, daemon_cmd
from testkit.servers import MosquittoServer, RedisServer
from testkit.wait import wait_until
from tests.integration.cloud_fixtures import ServerThread, base_asr, cloud_config, register_device  # noqa: F401
from tests.prereq import require

pytestmark = [pytest.mark.slow, pytest.mark.redis]
DEVICE = "edge-7"
FLEET = "lab"


@dataclass
class SecureCloud:
    server: ServerThread
    certs: Path
    token: str
    redis: RedisServer

    @property
    def target(self) -> str:
        return f"localhost:{self.server.port}"  # the server certificate names localhost (and 127.0.0.1)

    def client(self, token: str | None = None) -> CloudClientConfig:
        return CloudClientConfig(self.target, DEVICE, self.token if token is None else token,
                                 tls_ca=self.certs / "ca.pem")


@pytest.fixture()
def secure_cloud(tmp_path: Path, redis_server: RedisServer, base_asr: AsrModel,  # noqa: F811
                 edge_artifact: Path) -> Iterator[SecureCloud]:
    certs = tmp_path / "certs"
    init_certs(CertPlan(certs))
    token = register_device(redis_server.url, DEVICE)
    # FetchModel serves MODELS_ROOT/NAME: the artifact's own directory, as `cloud-service serve` would.
    config = cloud_config(redis_server.url, models_root=edge_artifact.parent,
                          tls=TlsConfig(certs / "server.pem", certs / "server.key"))
    with ServerThread(config, base_asr) as server:
        yield SecureCloud(server, certs, token, redis_server)


def _desired(artifact: Path) -> DesiredModel:
    """The desired-model message `fleetctl model publish` sends (its signature is the agent's to check)."""
    m = read_manifest(artifact)
    return DesiredModel(fleet=FLEET, device=DEVICE, version=1, name=m.name, model_version=m.version,
                        manifest_sha256=m.sha256, size=m.total_bytes,
                        manifest_signature=(artifact / SIGNATURE_NAME).read_text().strip(),
                        fetch=FetchInfo(name=m.name, version=m.version))


def _state(broker: MosquittoServer) -> DeviceState | None:
    """The device's retained state on the broker, as `fleetctl status` reads it."""
    got = collect_retained(BrokerSettings(port=broker.port), state_topic(FLEET, DEVICE), max_s=1.0)
    return parse_payload(DeviceState, got[state_topic(FLEET, DEVICE)]) if got else None


def _updater(tmp_path: Path, cloud: SecureCloud, pubkey: Path, config: CloudClientConfig,
             target: HotSwap) -> ModelUpdater:
    cfg = UpdaterConfig(models_dir=tmp_path / "device" / "models", state_dir=tmp_path / "device",
                        grpc_target=cloud.target, backoff_s=0.05, attempts=2)
    return ModelUpdater(cfg, target, load_public_key(pubkey), cloud=config)


def test_updater_downloads_the_real_artifact_over_tls_with_the_device_token(
        tmp_path: Path, secure_cloud: SecureCloud, edge_artifact: Path, operator_pubkey: Path) -> None:
    edge = EdgeConfig(model_dir=edge_artifact, threads=1)
    hotswap = HotSwap(Tunables(edge, EscalationPolicy()), EdgeTranscriber(edge))
    desired = _desired(edge_artifact)

    # Without a token, and with a forged one, the real cloud says UNAUTHENTICATED; nothing is installed and the
    # serving model stays.
    for token in ("", f"{DEVICE}.not-the-registered-secret"):
        updater = _updater(tmp_path, secure_cloud, operator_pubkey, secure_cloud.client(token), hotswap)
        with pytest.raises(UserError, match="UNAUTHENTICATED"):
            updater.install(desired)
        assert updater.installed is None and hotswap.transcriber.config.model_dir == edge_artifact

    # The device's own CloudClientConfig (TLS + its token): downloaded, verified file by file, self-tested, swapped.
    updater = _updater(tmp_path, secure_cloud, operator_pubkey, secure_cloud.client(), hotswap)
    updater.install(desired)
    installed = tmp_path / "device" / "models" / f"{desired.name}-{desired.model_version}"
    assert updater.installed == desired
    assert verify_artifact(installed, load_public_key(operator_pubkey)).sha256 == desired.manifest_sha256
    for name in read_manifest(edge_artifact).files:
        assert (installed / name).read_bytes() == (edge_artifact / name).read_bytes(), name
    hotswap.take_updates()
    assert hotswap.transcriber.config.model_dir == installed


def test_daemon_rollout_fetches_from_the_cloud_with_its_tls_and_token(
        tmp_path: Path, secure_cloud: SecureCloud, edge_artifact: Path, operator_pubkey: Path) -> None:
    """`edge-node run` as deployed (TLS to the cloud, its token, the operator key) under `fleetctl model
    publish`: the daemon's model updater must fetch with the daemon's own cloud settings, or the real cloud
    refuses it and the rollout is rolled back."""
    operator_key = operator_pubkey.with_name("operator.key")
    require(operator_key.exists(), f"{operator_key} is missing (make setup makes the operator keys)")
    broker = MosquittoServer(tmp_path / "mosquitto")
    broker.start()
    token_file = tmp_path / "token"
    atomic_write(token_file, (secure_cloud.token + "\n").encode(), mode=SECRET_MODE)
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    cmd = daemon_cmd(str(inbox), state, tmp_path / "events.jsonl", DEVICE, secure_cloud.target, token_file, extra=(
        "--tls-ca", str(secure_cloud.certs / "ca.pem"), "--mqtt", f"127.0.0.1:{broker.port}", "--fleet", FLEET,
        "--operator-pubkey", str(operator_pubkey), "--keep-running"))
    with (tmp_path / "edge.log").open("ab") as log:
        edge = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_until(lambda: (st := _state(broker)) is not None and st.online, 180, f"{DEVICE} online")
        rc = fleetctl_main(["model", "publish", str(edge_artifact), "--canary", "100%", "--then", "all",
                            "--timeout", "180", "--no-progress", "--broker", f"127.0.0.1:{broker.port}",
                            "--fleet", FLEET, "--redis", secure_cloud.redis.url, "--key", str(operator_key)])
        assert rc == 0, (tmp_path / "edge.log").read_text()[-3000:]
        m = read_manifest(edge_artifact)
        assert (state / "models" / f"{m.name}-{m.version}" / "manifest.json").read_bytes() == (
            edge_artifact / "manifest.json").read_bytes()
        wait_until(lambda: (st := _state(broker)) is not None and st.model_version == m.version, 30,
                   "the new version in the device's state")
    finally:
        edge.send_signal(signal.SIGTERM)
        edge.wait(60)
        broker.stop()
        shutil.rmtree(state / "models", ignore_errors=True)  # 40 MB: not left in the temporary directory
