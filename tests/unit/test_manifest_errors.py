"""Signed manifests refuse what is not a signed, complete artifact, naming the file: the checks before any rollout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import VerificationError
from shared.manifest import read_manifest, verify_artifact, verify_signature, write_manifest
from shared.signing import init_keypair, load_private_key, load_public_key


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """An artifact directory signed by a fresh key; returns (directory, public key file)."""
    priv, pub = init_keypair(tmp_path / "keys")
    d = tmp_path / "art"
    d.mkdir()
    (d / "encoder.onnx").write_bytes(b"\x01" * 100)
    write_manifest(d, {"name": "t", "version": "1"}, load_private_key(priv))
    return d, pub


def test_signing_again_lists_the_files_but_not_the_manifest_pair(signed: tuple[Path, Path], tmp_path: Path) -> None:
    d, pub = signed
    m = write_manifest(d, {"name": "t", "version": "2"}, load_private_key(tmp_path / "keys" / "operator.key"))
    assert set(m.files) == {"encoder.onnx"} and m.version == "2"
    assert verify_artifact(d, load_public_key(pub)).sha256 == m.sha256
    assert read_manifest(d).total_bytes == 100


@pytest.mark.parametrize(
    "doc", [b"{not json", b'{"name": "t", "version": "1", "files": []}', b'{"version": "1", "files": {}}']
)
def test_a_malformed_manifest_is_refused(tmp_path: Path, doc: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(doc)
    with pytest.raises(VerificationError, match=r"manifest\.json: malformed"):
        read_manifest(tmp_path)


def test_missing_or_mangled_pieces_are_named(signed: tuple[Path, Path], tmp_path: Path) -> None:
    d, pub = signed
    key = load_public_key(pub)
    with pytest.raises(VerificationError, match="not a directory"):
        verify_artifact(d / "encoder.onnx", key)
    (d / "manifest.sig").write_text("not base64!\n")
    with pytest.raises(VerificationError, match=r"manifest\.sig: not a base64 signature"):
        verify_signature(d, key)
    (d / "manifest.json").unlink()
    with pytest.raises(VerificationError, match=r"manifest\.json: missing"):
        verify_signature(d, key)
    with pytest.raises(VerificationError, match=r"manifest\.json: missing"):
        read_manifest(d)


def test_a_grown_file_fails_on_its_size_before_any_hashing(signed: tuple[Path, Path]) -> None:
    d, pub = signed
    with (d / "encoder.onnx").open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(VerificationError, match=r"encoder\.onnx: size 101 != 100 in manifest"):
        verify_artifact(d, load_public_key(pub))
    assert json.loads((d / "manifest.json").read_text())["files"]["encoder.onnx"]["size"] == 100


def test_a_manifest_over_the_device_bound_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Devices download at most MAX_MANIFEST_BYTES of a manifest (issue 13, finding 5): a build that would need
    more fails at once instead of making an artifact no device installs."""
    from shared import manifest
    from shared.errors import UserError

    priv, _ = init_keypair(tmp_path / "keys")
    d = tmp_path / "art"
    d.mkdir()
    for i in range(3):
        (d / f"part{i}.bin").write_bytes(b"x")
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 200)  # three entries are ~400 bytes of JSON
    with pytest.raises(UserError, match=r"more than the 200 a manifest may have"):
        write_manifest(d, {"name": "t", "version": "1"}, load_private_key(priv))
    assert not (d / "manifest.json").exists()
