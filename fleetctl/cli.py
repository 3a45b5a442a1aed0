"""Argument parsing for `fleetctl` and the model/key commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fleetctl.certs import CertPlan, init_certs
from fleetctl.fleet.commands import add_fleet_commands  # MQTT control plane (docs/mqtt.md)
from fleetctl.models.build import BuildOptions, build_edge_artifact
from fleetctl.models.weights import fetch_checkpoint
from fleetctl.registry import add_registry_commands  # device tokens, OAuth2 clients (cloud Redis)
from shared.errors import UserError
from shared.manifest import verify_artifact
from shared.signing import init_keypair, load_private_key, load_public_key

DEFAULT_KEY_DIR = Path("keys")


def _cmd_keys_init(args: argparse.Namespace) -> int:
    priv, pub = init_keypair(Path(args.dir), force=args.force)
    print(f"wrote private key {priv} (mode 0600; keep it secret) and public key {pub}")
    return 0


def _cmd_model_fetch(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path("models") / f"{args.name}.pt"
    path = Path(args.path) if args.path else None
    fetch_checkpoint(args.name, out, path=path, offline=args.offline)
    print(out)
    return 0


def _key_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("FLEET_OPERATOR_KEY_FILE")
    return Path(env) if env else DEFAULT_KEY_DIR / "operator.key"


def _watermark_key_path(arg: str | None) -> Path | None:
    env = os.environ.get("FLEET_WATERMARK_KEY_FILE")
    return Path(arg) if arg else Path(env) if env else None


def _cmd_model_build(args: argparse.Namespace) -> int:
    from fleetctl.models.watermark import read_key

    key = load_private_key(_key_path(args.key))
    wm_path = _watermark_key_path(args.watermark_key)
    if wm_path is not None and args.no_quantize:
        raise UserError("the watermark lives in the int8 weights: --watermark-key needs a quantized build")
    opts = BuildOptions(quantize=not args.no_quantize, opset=args.opset,
                        watermark_key=read_key(wm_path) if wm_path is not None else None)
    manifest = build_edge_artifact(Path(args.checkpoint), Path(args.out), key, opts)
    print(json.dumps(manifest.raw, indent=2, sort_keys=True))
    return 0


def _cmd_model_verify(args: argparse.Namespace) -> int:
    pub = Path(args.pubkey) if args.pubkey else DEFAULT_KEY_DIR / "operator.pub"
    manifest = verify_artifact(Path(args.dir), load_public_key(pub))
    print(f"OK {args.dir}: {manifest.name} {manifest.version}, {len(manifest.files)} files, "
          f"{manifest.total_bytes / 1e6:.1f} MB, signature valid")
    return 0


def _cmd_watermark_init_key(args: argparse.Namespace) -> int:
    import secrets

    from shared.fsutil import SECRET_MODE, atomic_write

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; --force replaces it (artifacts marked with the old key stay marked with it)")
    atomic_write(out, (secrets.token_urlsafe(32) + "\n").encode(), mode=SECRET_MODE)
    print(f"wrote watermark key {out} (mode 0600; keep it secret, and keep it: it proves your artifacts)")
    return 0


def _cmd_watermark_verify(args: argparse.Namespace) -> int:
    from fleetctl.models.watermark import THRESHOLD, detect, read_key

    path = _watermark_key_path(args.key)
    if path is None:
        raise UserError("give --key FILE or $FLEET_WATERMARK_KEY_FILE")
    found = detect(Path(args.dir), read_key(path))
    verdict = "watermark PRESENT" if found.present else "no watermark for this key"
    print(f"{verdict} in {args.dir}: {found.matched}/{found.bits} bits match ({found.share:.1%}; chance 50%, "
          f"threshold {THRESHOLD:.0%}; {found.sigmas:.1f} sigma above chance)")
    return 0 if found.present else 1


def _cmd_certs_init(args: argparse.Namespace) -> int:
    names = tuple(n for n in args.server_names.split(",") if n)
    devices = tuple(n for n in args.devices.split(",") if n)
    written = init_certs(CertPlan(Path(args.dir), names, devices, args.days), force=args.force)
    for path in written:
        print(path)
    return 0


def _checkpoint_arg(value: str) -> str:
    # `model build tiny.en` is shorthand for the fetched checkpoint models/tiny.en.pt.
    if not value.endswith(".pt") and os.path.sep not in value:
        candidate = Path("models") / f"{value}.pt"
        if not candidate.exists():
            raise argparse.ArgumentTypeError(f"{candidate} not found: run `fleetctl model fetch {value}` first")
        return str(candidate)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetctl", description="Operate a fleet of Whisper edge nodes.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="operator signing keys").add_subparsers(dest="keys_cmd", required=True)
    k = keys.add_parser("init", help="make an Ed25519 key pair")
    k.add_argument("--dir", default=str(DEFAULT_KEY_DIR))
    k.add_argument("--force", action="store_true", help="replace an existing key pair")
    k.set_defaults(func=_cmd_keys_init)

    certs = sub.add_parser("certs", help="development TLS certificates").add_subparsers(dest="certs_cmd", required=True)
    c = certs.add_parser("init", help="make a local CA, a server certificate and device client certificates")
    c.add_argument("--dir", default="certs")
    c.add_argument("--server-names", default="localhost,cloud,mosquitto", help="comma-separated DNS names")
    c.add_argument("--devices", default="", help="comma-separated device ids to issue client certificates for")
    c.add_argument("--days", type=int, default=365)
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=_cmd_certs_init)

    model = sub.add_parser("model", help="weights and edge artifacts").add_subparsers(dest="model_cmd", required=True)
    f = model.add_parser("fetch", help="resolve an openai-whisper checkpoint (path, cache, download, offline)")
    f.add_argument("name", help="model name, e.g. tiny.en or base")
    f.add_argument("--path", help="use this checkpoint file")
    f.add_argument("--out", help="where to write it (default models/NAME.pt)")
    f.add_argument("--offline", action="store_true", help="skip openai-whisper's cache and download")
    f.set_defaults(func=_cmd_model_fetch)

    b = model.add_parser("build", help="build the signed int8 ONNX edge artifact from a checkpoint")
    b.add_argument("checkpoint", type=_checkpoint_arg, help="checkpoint path, or a fetched name such as tiny.en")
    b.add_argument("--out", required=True, help="artifact directory to create, e.g. models/tiny.en-int8")
    b.add_argument("--key", help="operator private key (default $FLEET_OPERATOR_KEY_FILE or keys/operator.key)")
    b.add_argument("--no-quantize", action="store_true", help="keep fp32 weights (for comparisons)")
    b.add_argument("--opset", type=int, default=17)
    b.add_argument("--watermark-key", metavar="FILE", help="embed the fleet's keyed watermark in the int8 weights "
                   "(default $FLEET_WATERMARK_KEY_FILE; none: no watermark)")
    b.set_defaults(func=_cmd_model_build)

    wm = model.add_parser("watermark", help="the keyed watermark in artifacts' int8 weights").add_subparsers(
        dest="watermark_cmd", required=True)
    wk = wm.add_parser("init-key", help="make a watermark key file (0600)")
    wk.add_argument("--out", default=str(DEFAULT_KEY_DIR / "watermark.key"))
    wk.add_argument("--force", action="store_true")
    wk.set_defaults(func=_cmd_watermark_init_key)
    wv = wm.add_parser("verify", help="does this artifact carry our watermark? (exit 0 yes, 1 no)")
    wv.add_argument("dir", help="an artifact directory (encoder.onnx, decoder.onnx), e.g. one found on a device")
    wv.add_argument("--key", help="watermark key file (default $FLEET_WATERMARK_KEY_FILE)")
    wv.set_defaults(func=_cmd_watermark_verify)

    v = model.add_parser("verify", help="check every file's sha256 and the manifest signature")
    v.add_argument("dir")
    v.add_argument("--pubkey", help="operator public key (default keys/operator.pub)")
    v.set_defaults(func=_cmd_model_verify)

    add_fleet_commands(sub, model)

    add_registry_commands(sub)
    return p
