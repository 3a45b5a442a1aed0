"""`make demo`: show what the system does with what is built so far."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACT = ROOT / "models" / "tiny.en-int8"


def show_artifact() -> None:
    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    print(f"== edge artifact {ARTIFACT.relative_to(ROOT)}: {manifest['model']} {manifest['version']}")
    quant = manifest["quantization"]
    print(f"   quantization: {quant['weights']}; {quant.get('tied_embedding', '')}")
    total = 0
    for name, info in sorted(manifest["files"].items()):
        total += info["size"]
        print(f"   {name:<20} {info['size'] / 1e6:8.2f} MB  sha256 {info['sha256'][:16]}…")
    print(f"   {'total':<20} {total / 1e6:8.2f} MB ({total / 2**20:.2f} MiB)")


def main() -> int:
    show_artifact()
    return 0


if __name__ == "__main__":
    sys.exit(main())
