"""Operator keys, signed manifests and `fleetctl model verify` on tampered, mis-keyed and incomplete artifacts."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import UserError, VerificationError
from shared.manifest import verify_artifact, write_manifest
from shared.signing import init_keypair, load_private_key, load_public_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return init_keypair(tmp_path / "keys")


@pytest.fixture()
def artifact(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    d = tmp_path / "art"
    d.mkdir()
    (d / "encoder.onnx").write_bytes(b"\x01" * 1000)
    (d / "sub").mkdir()
    (d / "sub" / "vad.onnx").write_bytes(b"\x02" * 10)
    write_manifest(d, {"name": "t", "version": "1"}, load_private_key(keys[0]))
    return d


def test_private_key_is_owner_only_and_not_overwritten(tmp_path: Path) -> None:
    priv, pub = init_keypair(tmp_path)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    with pytest.raises(UserError, match="already exists"):
        init_keypair(tmp_path)
    assert load_public_key(pub)


def test_good_artifact_verifies(artifact: Path, keys: tuple[Path, Path]) -> None:
    m = verify_artifact(artifact, load_public_key(keys[1]))
    assert set(m.files) == {"encoder.onnx", "sub/vad.onnx"}


def test_tampered_file_is_named(artifact: Path, keys: tuple[Path, Path]) -> None:
    with (artifact / "encoder.onnx").open("r+b") as f:
        f.seek(500)
        f.write(b"\x00")
    with pytest.raises(VerificationError, match=r"encoder\.onnx: sha256 mismatch"):
        verify_artifact(artifact, load_public_key(keys[1]))


def test_wrong_key_fails(artifact: Path, tmp_path: Path) -> None:
    _, other_pub = init_keypair(tmp_path / "other")
    with pytest.raises(VerificationError, match="bad signature"):
        verify_artifact(artifact, load_public_key(other_pub))


def test_edited_manifest_fails_signature(artifact: Path, keys: tuple[Path, Path]) -> None:
    path = artifact / "manifest.json"
    path.write_text(path.read_text().replace('"version": "1"', '"version": "2"'))
    with pytest.raises(VerificationError, match="bad signature"):
        verify_artifact(artifact, load_public_key(keys[1]))


def test_missing_file_is_named(artifact: Path, keys: tuple[Path, Path]) -> None:
    (artifact / "sub" / "vad.onnx").unlink()
    with pytest.raises(VerificationError, match=r"vad\.onnx: missing"):
        verify_artifact(artifact, load_public_key(keys[1]))


def test_unsigned_artifact_fails(artifact: Path, keys: tuple[Path, Path]) -> None:
    (artifact / "manifest.sig").unlink()
    with pytest.raises(VerificationError, match="unsigned"):
        verify_artifact(artifact, load_public_key(keys[1]))


def _verify_cli(directory: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetctl", "model", "verify", str(directory), "--pubkey", str(pub)],
        capture_output=True, text=True, cwd=ROOT,
    )


def test_verify_cli_on_the_real_artifact(edge_artifact: Path, operator_pubkey: Path, tmp_path: Path) -> None:
    ok = _verify_cli(edge_artifact, operator_pubkey)
    assert ok.returncode == 0, ok.stderr
    assert "signature valid" in ok.stdout

    copy = tmp_path / "copy"
    shutil.copytree(edge_artifact, copy)
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "decoder.onnx").write_bytes(bytes(data))
    bad = _verify_cli(copy, operator_pubkey)
    assert bad.returncode == 3
    assert "decoder.onnx: sha256 mismatch" in bad.stderr
    assert "Traceback" not in bad.stderr

    _, other = init_keypair(tmp_path / "k2")
    wrong = _verify_cli(edge_artifact, other)
    assert wrong.returncode == 3 and "bad signature" in wrong.stderr

    (copy / "tokenizer.tiktoken").unlink()
    shutil.copyfile(edge_artifact / "decoder.onnx", copy / "decoder.onnx")
    missing = _verify_cli(copy, operator_pubkey)
    assert missing.returncode == 3 and "tokenizer.tiktoken: missing" in missing.stderr
