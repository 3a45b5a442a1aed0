"""Fuzz artifact manifests (issue 13): what a model server or a tampered disk can hand an edge.

Mutated manifest.json/manifest.sig pairs must fail verification with VerificationError unless the bytes are
unchanged. Manifests that ARE signed (an operator's buggy build) but hostile inside (paths out of the directory,
odd sizes and hashes) must also end in VerificationError naming the problem, never another exception.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from shared import signing
from shared.errors import VerificationError
from shared.manifest import MANIFEST_NAME, SIGNATURE_NAME, verify_artifact, write_manifest
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import json_values, mutated, mutated_json

pytestmark = [pytest.mark.fuzz]

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("artifact")
    (d / "encoder.onnx").write_bytes(b"\x08\x01" * 1000)
    (d / "tokens.txt").write_text("a\nb\n")
    write_manifest(d, {"name": "tiny.en-int8", "version": "1"}, KEY)
    return d


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def test_tampered_manifest_or_signature(artifact: Path, tmp_path: Path) -> None:
    good_doc = json.loads((artifact / MANIFEST_NAME).read_bytes())
    good_sig = (artifact / SIGNATURE_NAME).read_bytes()

    @fuzz_settings
    @given(manifest=mutated_json(good_doc), sig=st.one_of(st.just(good_sig), mutated(good_sig)))
    def case(manifest: bytes, sig: bytes) -> None:
        d = _copy(artifact, tmp_path / "a")
        (d / MANIFEST_NAME).write_bytes(manifest)
        (d / SIGNATURE_NAME).write_bytes(sig)
        try:
            verify_artifact(d, KEY.public_key())
        except VerificationError as exc:
            assert str(exc)
            return
        # Accepted: then it must be the signed bytes (json.dumps may reformat an unchanged doc).
        signing.verify(KEY.public_key(), manifest, base64.b64decode(sig.strip()), "m")

    case()


FILE_NAMES = st.one_of(
    st.sampled_from(["encoder.onnx", "tokens.txt", "../outside", "/etc/hostname", "a/../../b", "", ".", "x\x00y"]),
    st.text(max_size=40),
)
FILE_INFO = st.one_of(
    st.fixed_dictionaries({"sha256": st.text(max_size=70), "size": st.one_of(st.integers(), json_values())}),
    json_values(),
)


def test_signed_but_hostile_manifest(artifact: Path, tmp_path: Path) -> None:
    @fuzz_settings
    @given(files=st.dictionaries(FILE_NAMES, FILE_INFO, max_size=4), extra=st.dictionaries(st.text(max_size=10),
                                                                                            json_values(), max_size=3))
    def case(files: dict[str, object], extra: dict[str, object]) -> None:
        d = _copy(artifact, tmp_path / "b")
        doc = {**extra, "schema": 1, "name": "tiny.en-int8", "version": "1", "files": files}
        data = json.dumps(doc).encode()
        (d / MANIFEST_NAME).write_bytes(data)
        (d / SIGNATURE_NAME).write_text(base64.b64encode(signing.sign(KEY, data)).decode())
        try:
            manifest = verify_artifact(d, KEY.public_key())
        except VerificationError as exc:
            assert str(exc)
            return
        for rel in manifest.files:  # accepted: every listed file is a real file inside the artifact
            assert (d / rel).resolve().is_relative_to(d.resolve())

    case()
