"""The hybrid benchmark (issue 7): edge-only, cloud-only and hybrid at a sweep of escalation thresholds, through
the real edge -> gRPC -> cloud path, scored on a corpus manifest.

    python -m bench.hybrid_eval --manifest M --json OUT [--plot OUT.png] [--cloud HOST:PORT --token-file F]
        [--thresholds 0,0.2,...] [--limit-per-condition N] [--rows ROWS.jsonl]

Without `--cloud` it starts its own cloud: a real Redis (testkit/servers.py), a device registered by
`register_device` (what `fleetctl device add` runs), and a `cloud-service serve` subprocess with the base
checkpoint, all on free loopback ports, stopped at the end.

Cost: one edge pass per clip, and at most one cloud call per segment whatever the number of thresholds (the
cloud's answer for a segment does not depend on the threshold), plus one call per clip (per 30 s) for
cloud-only. Calls are sequential, so a latency is one clip's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_node.core.escalation_policy import EscalationPolicy, language_hint
from evaluation import hybrid_policy as policy
from evaluation.hybrid_records import (
    ClipRecord,
    CloudAnswer,
    budget_check,
    check_default_matches,
    cloud_hypothesis,
    detect_on_english,
    edge_hypothesis,
    record_json,
    sweep,
)
from evaluation.manifest import ManifestRow, read_manifest
from evaluation.report import format_sweep, format_table, results_json
from evaluation.scoring import score, select_rows
from shared.cli import run_cli, setup_logging
from shared.errors import UserError
from shared.whisper_rules import DETECT
from shared.wire_audio import SAMPLE_RATE, WireEncoding
from testkit.local_cloud import local_cloud

if TYPE_CHECKING:
    from edge_node.adapters.cloud_client import EscalationClient
    from edge_node.core.confidence import ConfidenceConfig
    from edge_node.engine.transcriber import EdgeTranscriber
    from proto.asr.v1 import asr_pb2

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEVICE_ID = "hybrid-eval"
DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MAX_CLOUD_AUDIO_S = 30.0  # the cloud refuses longer audio; cloud-only sends longer clips in pieces


@dataclass(frozen=True)
class HybridEvalConfig:
    manifest: Path
    json_out: Path
    plot: Path | None = None
    rows_out: Path | None = None
    cloud: str | None = None  # HOST:PORT of a running cloud; None: start one
    token_file: Path | None = None  # the device token for --cloud
    device_id: str = DEVICE_ID
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    limit_per_condition: int | None = None
    encoding: WireEncoding = WireEncoding.FLAC
    device_language: str = "en"
    cloud_only_language: str = DETECT  # the cloud-only system does not know a clip's language either
    model_dir: Path = ROOT / "models" / "tiny.en-int8"
    cloud_model: Path = ROOT / "models" / "base.pt"
    edge_threads: int = 1
    cloud_threads: int = 2
    timeout_s: float = 300.0  # per cloud call: the served model may be busy with a neighbour's work


# ------------------------------------------------------------------------------------------------ the cloud


def _request(
    segment_id: str, device_id: str, samples: np.ndarray, encoding: WireEncoding, language: str, start: float
) -> asr_pb2.TranscribeRequest:
    from edge_node.adapters.cloud_client import audio_message
    from proto.asr.v1 import asr_pb2

    audio = audio_message(samples, encoding)
    return asr_pb2.TranscribeRequest(
        segment_id=segment_id, device_id=device_id, audio=audio, language=language, segment_start=start
    )


# ------------------------------------------------------------------------------------------------ the runs


class Runner:
    """Owns the edge engine and the gRPC client; fills ClipRecords (the only place that does I/O)."""

    def __init__(self, cfg: HybridEvalConfig, edge: EdgeTranscriber, client: EscalationClient) -> None:
        self.cfg = cfg
        self.edge = edge
        self.client = client
        self.confidence: ConfidenceConfig = edge.config.confidence
        self.escalation = EscalationPolicy(device_language=cfg.device_language)
        self.run_id = uuid.uuid4().hex[:8]  # segment ids unique per run: a reused cloud's store can't answer
        # The cloud's answer depends only on the audio and the language hint: a hybrid escalation of a whole
        # clip with "detect" is the cloud-only request, so it is asked once (the answer, its latency included,
        # is reused).
        self._asked: dict[tuple[str, str], CloudAnswer] = {}
        self.calls = 0

    def _send(self, segment_id: str, samples: np.ndarray, start: float, language: str) -> CloudAnswer:
        import hashlib

        # The cloud accepts only segment ids that start with the device id and a dash.
        segment_id = f"{self.cfg.device_id}-{segment_id}"
        req = _request(segment_id, self.cfg.device_id, samples, self.cfg.encoding, language, start)
        key = (hashlib.sha256(req.audio.data).hexdigest(), language)
        if key in self._asked:
            return self._asked[key]
        t0 = time.perf_counter()
        try:
            resp = self.client.transcribe(req, timeout_s=self.cfg.timeout_s)
            self.calls += 1
        except Exception as exc:  # CloudError: one line, not a traceback
            raise UserError(f"cloud call for {segment_id} failed: {exc}") from None
        seconds = samples.size / SAMPLE_RATE
        latency = time.perf_counter() - t0
        answer = CloudAnswer(resp.text.strip(), resp.language, seconds, req.ByteSize(), latency, language)
        self._asked[key] = answer
        return answer

    def clip(self, row: ManifestRow, path: Path) -> ClipRecord:
        from edge_node.core.windows import plan_windows
        from shared import audio_files

        samples = audio_files.load_audio(path)
        t0 = time.perf_counter()
        result = self.edge.transcribe(samples)
        edge_s = time.perf_counter() - t0
        duration = samples.size / SAMPLE_RATE
        # The edge's own windows (same VAD, same packing), to send what it decoded.
        ec = self.edge.config
        speech = self.edge.vad.speech_segments(samples, ec.vad)
        windows = [(w.start, w.end) for w in plan_windows(speech, duration, ec.max_window_s)]
        rec = ClipRecord(row, duration, result.segments, edge_s, {})
        top = max(self.cfg.thresholds)
        for i, seg in enumerate(result.segments):
            if not policy.escalates(seg.confidence, seg.temperature, top, self.confidence):
                continue
            start, end = policy.window_for(seg.start, seg.end, windows)
            chunk = samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
            lang = language_hint(seg.confidence, self.escalation)
            rec.answers[i] = self._send(f"{self.run_id}/{row.id}/seg{i}", chunk, start, lang)
        # Cloud-only: the whole clip, in pieces of at most 30 s.
        pieces = [
            self._send(f"{self.run_id}/{row.id}/all{k}", samples[a:b], a / SAMPLE_RATE, self.cfg.cloud_only_language)
            for k, (a, b) in enumerate(policy.pieces(samples.size, int(MAX_CLOUD_AUDIO_S * SAMPLE_RATE)))
        ]
        rec.cloud_only = CloudAnswer(
            " ".join(p.text for p in pieces if p.text),
            pieces[0].language if pieces else "",
            duration,
            sum(p.bytes_sent for p in pieces),
            sum(p.latency_s for p in pieces),
        )
        return rec


def run(cfg: HybridEvalConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Everything but argument parsing: returns the results JSON (also written to cfg.json_out)."""
    from edge_node.engine.config import EdgeConfig
    from edge_node.engine.transcriber import EdgeTranscriber

    if cfg.cloud and cfg.token_file is None:
        raise UserError("--cloud needs --token-file (the device's bearer token)")
    rows = select_rows(read_manifest(cfg.manifest), cfg.limit_per_condition)
    if not rows:
        raise UserError(f"no clips in {cfg.manifest}")
    if not (cfg.model_dir / "encoder.onnx").is_file():
        raise UserError(f"edge artifact not found in {cfg.model_dir} (run `fleetctl model build`)")
    edge = EdgeTranscriber(EdgeConfig(model_dir=cfg.model_dir, threads=cfg.edge_threads))
    conf = edge.config.confidence
    thresholds = tuple(sorted({*cfg.thresholds, conf.escalate_below}))
    cfg = HybridEvalConfig(**{**cfg.__dict__, "thresholds": thresholds})
    records, calls = _collect(cfg, edge, rows, progress)
    mismatched = check_default_matches(records, conf)
    if mismatched:
        log.warning("%d segment(s) escalate differently from the shipped flag at the default", mismatched)
    edge_point = score(rows, [edge_hypothesis(r) for r in records])
    cloud_point = score(rows, [cloud_hypothesis(r) for r in records])
    hybrid = sweep(records, thresholds, conf)
    chosen = next(p for p in hybrid if p.threshold == conf.escalate_below)
    doc = results_json(edge_point, cloud_point, hybrid, chosen)
    doc["setup"] = {
        "manifest": str(cfg.manifest),
        "clips": len(rows),
        "audio_seconds": round(sum(r.duration for r in records), 1),
        "limit_per_condition": cfg.limit_per_condition,
        "encoding": cfg.encoding.value,
        "default_threshold": conf.escalate_below,
        "detect_language_below": EscalationPolicy().detect_language_below,
        "cloud_only_language": cfg.cloud_only_language,
        "cloud_calls": calls,
        "escalation_answers": sum(len(r.answers) for r in records),
        "shipped_flag_mismatches": mismatched,
        **detect_on_english(records),
        **budget_check(records, conf.escalate_below, conf),
    }
    _write_outputs(cfg, doc, records, conf)
    print(format_table({"edge": edge_point, "cloud": cloud_point, f"hybrid@{chosen.threshold:g}": chosen}))
    print()
    print(format_sweep(hybrid))
    return doc


def _collect(cfg: HybridEvalConfig, edge: EdgeTranscriber, rows: list[ManifestRow],
             progress: Callable[[str], None] | None) -> tuple[list[ClipRecord], int]:
    """Every clip through the edge and its escalations through a cloud (cfg.cloud, or a throwaway local one)."""
    import tempfile

    from edge_node.adapters.cloud_client import CloudClientConfig, EscalationClient, read_token

    with contextlib.ExitStack() as stack:
        if cfg.cloud and cfg.token_file:
            target, token = cfg.cloud, read_token(cfg.token_file)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hybrid-eval-")))
            cloud = local_cloud(cfg.cloud_model, tmp, cfg.device_id, cfg.cloud_threads, MAX_CLOUD_AUDIO_S)
            target, token = stack.enter_context(cloud)
        client = EscalationClient(CloudClientConfig(target, cfg.device_id, token, timeout_s=cfg.timeout_s))
        stack.callback(client.close)
        runner = Runner(cfg, edge, client)
        records = []
        for n, row in enumerate(rows, 1):
            records.append(runner.clip(row, cfg.manifest.parent / row.audio))
            if progress:
                progress(f"{n}/{len(rows)} {row.id}: {len(records[-1].answers)} escalation(s)")
        return records, runner.calls


def _write_outputs(cfg: HybridEvalConfig, doc: dict[str, Any], records: list[ClipRecord],
                   conf: ConfidenceConfig) -> None:
    cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if cfg.rows_out:
        cfg.rows_out.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(record_json(r, conf), ensure_ascii=False) + "\n" for r in records]
        cfg.rows_out.write_text("".join(lines))
    if cfg.plot:
        from evaluation.plot import plot_results

        plot_results(doc, cfg.plot)


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"thresholds must be numbers separated by commas: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("give at least one threshold, none negative")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hybrid_eval", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True, help="write the results here")
    p.add_argument("--plot", type=Path, help="write the PNG here")
    p.add_argument("--rows", type=Path, help="write one JSON line per clip (edge, cloud, hybrid texts)")
    p.add_argument("--cloud", help="HOST:PORT of a running cloud (default: start one)")
    p.add_argument("--token-file", type=Path, help="device token for --cloud")
    p.add_argument("--device-id", default=DEVICE_ID)
    p.add_argument("--thresholds", type=_thresholds, default=DEFAULT_THRESHOLDS, help="comma-separated")
    p.add_argument("--limit-per-condition", type=int, help="only the first N clips of each condition")
    p.add_argument("--encoding", choices=[e.value for e in WireEncoding], default=WireEncoding.FLAC.value)
    p.add_argument("--cloud-only-language", default=DETECT, help="language hint of cloud-only calls")
    p.add_argument("--edge-threads", type=int, default=1)
    p.add_argument("--cloud-threads", type=int, default=2)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.limit_per_condition is not None and args.limit_per_condition <= 0:
        p.error("--limit-per-condition must be positive")
    cfg = HybridEvalConfig(
        manifest=args.manifest,
        json_out=args.json,
        plot=args.plot,
        rows_out=args.rows,
        cloud=args.cloud,
        token_file=args.token_file,
        device_id=args.device_id,
        thresholds=args.thresholds,
        limit_per_condition=args.limit_per_condition,
        encoding=WireEncoding(args.encoding),
        cloud_only_language=args.cloud_only_language,
        edge_threads=args.edge_threads,
        cloud_threads=args.cloud_threads,
    )
    return run_cli(lambda: (run(cfg, progress=lambda m: print(m, file=sys.stderr, flush=True)), 0)[1])


if __name__ == "__main__":
    sys.exit(main())
