"""The MQTT agent's state dir: the last accepted config messages and the desired-state high-water marks.

    state_dir/config.json   {"fleet": DesiredConfig | null, "device": DesiredConfig | null}: booted on offline
    state_dir/marks.json    {"config/fleet": {"version", "digest"}, ...}: per kind and scope, the highest version
                            accepted (see edge_node.core.desired_state); it outlives clears and restarts, so an
                            older signed message cannot be replayed to roll the device back

Both are written crash-safe (`atomic_write`: temporary file, fsync, rename), the marks before the config, so a
crash in between leaves a mark at least as high as the config it guards. Reading never raises: a file that
cannot be read is logged and treated as absent (the device boots on its defaults rather than crash-looping).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from edge_node.core.desired_state import Mark, marks_from_doc, marks_to_doc
from shared.fleet_schema import DesiredConfig
from shared.fsutil import atomic_write

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # the last accepted desired-config messages (fleet and device scope)
MARKS_FILE = "marks.json"  # the high-water marks


class AgentStateDir:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def load_marks(self) -> dict[str, Mark]:
        path = self.dir / MARKS_FILE
        if not path.exists():
            return {}
        try:
            return marks_from_doc(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            # Only the persisted config (booted next) raises the marks again until newer messages arrive.
            log.error("cannot read the high-water marks %s (%s): starting without them", path, exc)
            return {}

    def save_marks(self, marks: Mapping[str, Mark]) -> None:
        atomic_write(self.dir / MARKS_FILE, json.dumps(marks_to_doc(marks), indent=1).encode())

    def load_config(self) -> dict[str, bytes]:
        """The persisted messages by scope ("fleet", "device"), as payloads to verify again like any other."""
        path = self.dir / CONFIG_FILE
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            return {scope: json.dumps(doc[scope]).encode() for scope in ("fleet", "device") if doc.get(scope)}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("cannot read %s (%s); starting from engine defaults", path, exc)
            return {}

    def save_config(self, fleet: DesiredConfig | None, device: DesiredConfig | None) -> None:
        doc = {scope: json.loads(msg.to_json()) if msg else None for scope, msg in (("fleet", fleet),
                                                                                    ("device", device))}
        atomic_write(self.dir / CONFIG_FILE, json.dumps(doc).encode())
