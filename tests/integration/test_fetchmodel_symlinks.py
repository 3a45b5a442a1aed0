"""Issue 13, finding 9b: the real cloud FetchModel (create_server, in a thread) never serves what a symlink in an
artifact points to. Before the fix `manifest.sig` was read through a symlink (it served /etc/hostname), and so
were `manifest.json` and listed files whose links stayed inside the artifact directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_service.asr.model import AsrModel
from proto.asr.v1 import asr_pb2, asr_pb2_grpc
from shared.manifest import MANIFEST_NAME, SIGNATURE_NAME
from testkit.fleet import build_artifact
from tests.integration.cloud_fixtures import (
    ServerThread,
    cloud_config,
)

pytestmark = pytest.mark.slow
SECRET = b"secret outside every artifact\n"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """models_root with artifacts, each rigged one way; SECRET lies outside it."""
    key = Ed25519PrivateKey.generate()
    root, outside = tmp_path / "models", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    for name in ("honest", "sig-out", "manifest-out", "file-in", "file-out", "sig-fifo"):
        built, _ = build_artifact(tmp_path / "build", name, "1", key, 1.0)
        built.rename(root / name)
    (root / "sig-out" / SIGNATURE_NAME).unlink()
    (root / "sig-out" / SIGNATURE_NAME).symlink_to(outside / "secret")  # the finding: /etc/hostname
    shutil.copy(root / "manifest-out" / MANIFEST_NAME, outside / MANIFEST_NAME)
    (root / "manifest-out" / MANIFEST_NAME).unlink()
    (root / "manifest-out" / MANIFEST_NAME).symlink_to(outside / MANIFEST_NAME)
    (root / "file-in" / "weights.bin").unlink()
    (root / "file-in" / "weights.bin").symlink_to("scale.onnx")  # stays inside, still a link
    (root / "file-out" / "weights.bin").unlink()
    (root / "file-out" / "weights.bin").symlink_to(outside / "secret")
    (root / "sig-fifo" / SIGNATURE_NAME).unlink()
    os.mkfifo(root / "sig-fifo" / SIGNATURE_NAME)
    # An operator's "current" link to an artifact directory is fine: the directory is what the name resolves to.
    (root / "linked").symlink_to(root / "honest", target_is_directory=True)
    return root


@pytest.fixture()
def stub(root: Path, tiny_asr: AsrModel) -> Iterator[asr_pb2_grpc.EscalationServiceStub]:
    with ServerThread(cloud_config(None, auth=False, models_root=root), tiny_asr) as server:
        yield server.stub()


def _fetch(stub: asr_pb2_grpc.EscalationServiceStub, name: str, file: str) -> bytes:
    request = asr_pb2.ModelRequest(name=name, version="1", file=file)
    return b"".join(c.data for c in stub.FetchModel(request, timeout=10))


@pytest.mark.parametrize(("name", "file", "why"), [
    ("sig-out", SIGNATURE_NAME, "symbolic link"),
    ("manifest-out", MANIFEST_NAME, "symbolic link"),
    ("manifest-out", "scale.onnx", "symbolic link"),  # the artifact's manifest itself is a link: nothing served
    ("file-in", "weights.bin", "symbolic link"),
    ("file-out", "weights.bin", "symbolic link"),
    ("sig-fifo", SIGNATURE_NAME, "not a regular file"),
])
def test_fetchmodel_refuses_links_and_special_files(
        stub: asr_pb2_grpc.EscalationServiceStub, name: str, file: str, why: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _fetch(stub, name, file)
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED), err.value
    details = err.value.details() or ""
    assert why in details and name in details and (file in details or MANIFEST_NAME in details), details
    assert "outside" not in details  # the link's target is not echoed back


def test_fetchmodel_still_serves_regular_files(stub: asr_pb2_grpc.EscalationServiceStub, root: Path) -> None:
    for name in ("honest", "linked"):
        for file in (MANIFEST_NAME, SIGNATURE_NAME, "scale.onnx", "weights.bin"):
            assert _fetch(stub, name, file) == (root / "honest" / file).read_bytes(), (name, file)
