"""The TLS listener option (deploy/mosquitto/tls.conf): a device agent connects over TLS, verifying the broker
against the fleet's CA, and receives its desired config."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_node.adapters.mqtt_agent import AgentConfig, DeviceAgent
from edge_node.core.desired_state import ParamsBox
from shared.fleet_schema import ConfigParams, DesiredConfig, fleet_config_topic
from shared.signing import init_keypair, load_private_key
from testkit.fleet import FLEET
from testkit.servers import MosquittoServer, free_port
from testkit.wait import wait_until

pytestmark = pytest.mark.mqtt
TLS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "tls.conf"


Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Issuer | None, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer[0] if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(path: Path, obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> None:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def test_agent_connects_over_tls(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fleet-ca", ca_key, None, ca=True)
    _pem(tls / "ca.crt", ca)
    _pem(tls / "server.crt", _cert("broker", srv_key, (ca.subject, ca_key), ca=False))
    _pem(tls / "server.key", srv_key)
    tls_port = free_port()
    conf = TLS_CONF.read_text().replace("/etc/mosquitto/fleet/tls/", f"{tls}/").replace(
        "listener 8883 0.0.0.0", f"listener {tls_port} 127.0.0.1")
    extra = "allow_anonymous true\n" + conf
    broker = MosquittoServer(tmp_path / "mosquitto", extra_conf=extra)
    broker.start()
    priv, pub = init_keypair(tmp_path / "keys")
    box = ParamsBox()
    agent = DeviceAgent(AgentConfig(fleet=FLEET, device_id="dev1", state_dir=tmp_path / "dev1", port=tls_port,
                                    operator_pubkey=pub, tls_ca=tls / "ca.crt"), box)
    try:
        agent.start()
        assert agent.wait_connected(10), "no TLS connection"
        import paho.mqtt.client as mqtt

        op = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="op")
        op.tls_set(ca_certs=str(tls / "ca.crt"))
        op.connect("127.0.0.1", tls_port)
        op.loop_start()
        msg = DesiredConfig(fleet=FLEET, version=1, params=ConfigParams(beam_size=4))
        msg = msg.signed(load_private_key(priv))
        op.publish(fleet_config_topic(FLEET), msg.to_json(), qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda: box.current().beam_size == 4, what="config over TLS")
        op.disconnect()
        op.loop_stop()
    finally:
        agent.stop()
        broker.stop()
