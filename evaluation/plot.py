"""Plot WER against the share of audio escalated: hybrid operating points as a curve, edge-only and cloud-only
as reference lines, one panel for everything and one per condition family.

    python -m bench.plot RESULTS.json --out PLOT.png

RESULTS.json has issue 7's form: `edge`, `cloud` (operating points), `hybrid` (a list of them), `chosen`
(optional). A point's `by_condition` (errors, reference words, seconds) lets a panel pool its conditions
exactly; without it the panel averages `wer_by_condition` and uses the overall escalated share. A family with
no reference words (music) plots words emitted per clip instead of WER.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.manifest import condition_family
from shared.cli import run_cli, setup_logging
from shared.errors import UserError

log = logging.getLogger(__name__)

OVERALL = "all conditions"
EDGE_COLOUR, CLOUD_COLOUR, HYBRID_COLOUR, CHOSEN_COLOUR = "tab:blue", "tab:red", "tab:green", "black"


@dataclass(frozen=True)
class PanelValue:
    x: float | None  # % of audio seconds escalated
    y: float | None  # WER % (or words per clip on no-speech panels)


def _families(points: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Family -> its conditions, in order of first appearance over all points."""
    out: dict[str, list[str]] = {}
    for p in points:
        for cond in p.get("wer_by_condition") or {}:
            fam = out.setdefault(condition_family(cond), [])
            if cond not in fam:
                fam.append(cond)
    return out


def _no_speech_only(point: Mapping[str, Any], conds: list[str]) -> bool:
    by = point.get("by_condition") or {}
    if by and all(c in by for c in conds):
        return bool(sum(by[c]["ref_words"] for c in conds) == 0)
    return all((point.get("wer_by_condition") or {}).get(c) is None for c in conds)


def panel_value(
    point: Mapping[str, Any], conds: list[str] | None, words_per_clip: bool = False
) -> PanelValue:
    """x and y of one point in a panel pooling `conds` (None: the whole corpus)."""
    by = point.get("by_condition") or {}
    fallback_x = point.get("escalated_seconds_fraction")
    if conds is None:
        wer = point.get("wer")
        return PanelValue(
            None if fallback_x is None else 100 * fallback_x, None if wer is None else 100 * wer
        )
    if by and all(c in by for c in conds):
        rows = [by[c] for c in conds]
        seconds = sum(r["audio_seconds"] for r in rows)
        x = sum(r["escalated_seconds"] for r in rows) / seconds if seconds else None
        if words_per_clip:
            clips = sum(r["clips"] for r in rows)
            y = sum(r["no_speech_words"] for r in rows) / clips if clips else None
        else:
            ref = sum(r["ref_words"] for r in rows)
            y = 100 * sum(r["errors"] for r in rows) / ref if ref else None
        return PanelValue(None if x is None else 100 * x, y)
    wers = [(point.get("wer_by_condition") or {}).get(c) for c in conds]
    known = [w for w in wers if w is not None]
    y = 100 * sum(known) / len(known) if known and not words_per_clip else None
    return PanelValue(None if fallback_x is None else 100 * fallback_x, y)


def _check(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if not isinstance(results, Mapping):
        raise UserError("results must be a JSON object with keys edge, cloud, hybrid")
    hybrid = results.get("hybrid") or []
    if not isinstance(hybrid, list):
        raise UserError("results 'hybrid' must be a list of operating points")
    points = [p for p in (results.get("edge"), results.get("cloud"), *hybrid) if p]
    if not points:
        raise UserError("results hold no operating points (edge, cloud, hybrid all empty)")
    return points


def plot_results(results: Mapping[str, Any], out: Path, title: str | None = None) -> Path:
    """Render the figure to `out` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = _check(results)
    panels: dict[str, list[str] | None] = {OVERALL: None, **_families(points)}
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    hybrid = sorted(
        results.get("hybrid") or [], key=lambda p: (p.get("threshold") is None, p.get("threshold"))
    )
    for ax, (name, conds) in zip(axes.flat, panels.items(), strict=False):
        words = conds is not None and all(_no_speech_only(p, conds) for p in points)
        _panel(ax, name, conds, words, results, hybrid)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False, fontsize=10)
    fig.suptitle(title or "WER against the share of audio escalated to the cloud", fontsize=14)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _panel(
    ax: Any,
    name: str,
    conds: list[str] | None,
    words: bool,
    results: Mapping[str, Any],
    hybrid: list[Mapping[str, Any]],
) -> None:
    top = 0.0
    refs: list[str] = []
    for key, colour, label in (("edge", EDGE_COLOUR, "edge only"), ("cloud", CLOUD_COLOUR, "cloud only")):
        point = results.get(key)
        if not point:
            continue
        v = panel_value(point, conds, words)
        if v.y is not None:
            top = max(top, v.y)
            refs.append(f"{label} {v.y:.1f}")
            ax.axhline(v.y, color=colour, linestyle="--", linewidth=1.5, label=f"{label}")
            if v.x is not None:
                ax.plot([v.x], [v.y], marker="s", color=colour, markersize=6)
    values = [(p.get("threshold"), panel_value(p, conds, words)) for p in hybrid]
    values = [(t, v) for t, v in values if v.x is not None and v.y is not None]
    if values:
        xs = [v.x for _, v in values]
        ys = [v.y for _, v in values]
        top = max(top, *[y for y in ys if y is not None])
        ax.plot(
            xs,
            ys,
            marker="o",
            color=HYBRID_COLOUR,
            linewidth=2,
            label="hybrid (labels: escalation threshold)",
        )
        _label_thresholds(ax, values)
    chosen = results.get("chosen")
    if chosen:
        v = panel_value(chosen, conds, words)
        if v.x is not None and v.y is not None:
            ax.plot(
                [v.x],
                [v.y],
                marker="*",
                color=CHOSEN_COLOUR,
                markersize=15,
                linestyle="none",
                label="default operating point",
            )
    if conds is None or conds == [name]:
        subtitle = ""
    else:
        subtitle = ", ".join(conds) if len(conds) <= 3 else f"{len(conds)} conditions"
    ax.set_title(f"{name}\n{subtitle}" if subtitle else name, fontsize=11)
    ax.set_xlabel("audio seconds escalated (%)")
    ax.set_ylabel("words emitted per clip" if words else "WER (%)")
    ax.set_xlim(-3, 103)
    if refs:  # the reference values in words, in the headroom: the two lines may coincide
        ax.text(0.02, 0.97, " · ".join(refs), transform=ax.transAxes, va="top", fontsize=8, color="dimgray")
    # Headroom above the highest line, and a little room below 0 so that lines at 0 WER show.
    span = top if top > 0 else 1.0
    ax.set_ylim(-0.03 * span, 1.15 * span)
    ax.grid(True, alpha=0.3)


def _label_thresholds(ax: Any, values: list[tuple[float | None, PanelValue]]) -> None:
    """Write each threshold beside its point, skipping points that sit on top of the last labelled one."""
    span = max(v.y or 0.0 for _, v in values) or 1.0
    last: PanelValue | None = None
    for t, v in values:
        assert v.x is not None and v.y is not None
        if t is None:
            continue
        if last is not None and abs(v.x - (last.x or 0)) < 8 and abs(v.y - (last.y or 0)) < 0.06 * span:
            continue
        right = v.x > 85  # keep the label inside the frame
        ax.annotate(
            f"{t:g}",
            (v.x, v.y),
            textcoords="offset points",
            xytext=(-6 if right else 4, 5),
            ha="right" if right else "left",
            fontsize=8,
        )
        last = v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="JSON with edge, cloud, hybrid, chosen")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        try:
            results = json.loads(args.results.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"results not found: {args.results}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read results {args.results}: {exc}") from None
        print(plot_results(results, args.out, args.title))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
