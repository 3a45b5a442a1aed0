"""The MQTT control plane's contract: the topic tree and the JSON payloads, validated with pydantic.

Topic tree (one fleet, devices by id; names are restricted to `NAME_PATTERN` so they can never carry MQTT
wildcards or extra levels)::

    fleet/{fleet}/config                  retained DesiredConfig for every device
    fleet/{fleet}/model                   retained DesiredModel for every device
    fleet/{fleet}/devices/{id}/config     retained DesiredConfig override for one device
    fleet/{fleet}/devices/{id}/model      retained DesiredModel for one device (canary)
    fleet/{fleet}/devices/{id}/state      retained DeviceState; the device's last will sets it offline
    fleet/{fleet}/devices/{id}/ack        one Ack per update, accepted or rejected with a reason
    fleet/{fleet}/devices/{id}/results    asynchronous cloud results for the device

Desired-state messages (config and model) are signed by the operator key (see `signed_bytes`): the device
trusts the operator, not the broker. Every payload has `schema`; an unknown schema or field is rejected.
Clearing a retained desired-state topic is a signed, versioned `Tombstone`, never an empty payload: anyone who
can delete a retained message could send one, and it would carry no version to order it by.

No clock here: the timestamps (`issued_at`, `last_seen`, `at`, unix seconds) are the sender's, passed in by
whoever builds the message (the operator's rollout, the device's agent and reconciler).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import signing
from shared.errors import UserError, VerificationError
from shared.hotwords import MAX_PHRASES, check_hotwords
from shared.whisper_rules import check_prompt_text

SCHEMA_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
T = TypeVar("T", bound=BaseModel)
MAX_PAYLOAD_BYTES = 64 * 1024  # desired state is small; anything bigger is rejected before parsing
MAX_REASON_CHARS = 1000  # an Ack's reason; longer ones are cut by `clip_reason`
ELLIPSIS = "…"

# ---------------------------------------------------------------------------------------------- topics


def check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise UserError(f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . - (no '/', '+', '#')")
    return value


def fleet_config_topic(fleet: str) -> str:
    return f"fleet/{check_name(fleet, 'fleet')}/config"


def fleet_model_topic(fleet: str) -> str:
    return f"fleet/{check_name(fleet, 'fleet')}/model"


def _device(fleet: str, device: str, leaf: str) -> str:
    return f"fleet/{check_name(fleet, 'fleet')}/devices/{check_name(device, 'device id')}/{leaf}"


def device_config_topic(fleet: str, device: str) -> str:
    return _device(fleet, device, "config")


def device_model_topic(fleet: str, device: str) -> str:
    return _device(fleet, device, "model")


def state_topic(fleet: str, device: str) -> str:
    return _device(fleet, device, "state")


def ack_topic(fleet: str, device: str) -> str:
    return _device(fleet, device, "ack")


def results_topic(fleet: str, device: str) -> str:
    return _device(fleet, device, "results")


def all_states_topic(fleet: str) -> str:
    """Subscription filter for every device's state ('+' for fleet gives all fleets)."""
    return f"fleet/{fleet}/devices/+/state"


def all_acks_topic(fleet: str) -> str:
    return f"fleet/{fleet}/devices/+/ack"


Kind = Literal["config", "model"]


@dataclass(frozen=True)
class TopicInfo:
    fleet: str
    device: str | None  # None: fleet-wide
    leaf: str  # config, model, state, ack, results


def parse_topic(topic: str) -> TopicInfo | None:
    """Split a topic of the tree; None when it is not one of ours."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "fleet" and parts[2] in ("config", "model"):
        return TopicInfo(parts[1], None, parts[2]) if _NAME_RE.match(parts[1]) else None
    if (len(parts) == 5 and parts[0] == "fleet" and parts[2] == "devices"
            and _NAME_RE.match(parts[1]) and _NAME_RE.match(parts[3])):
        return TopicInfo(parts[1], parts[3], parts[4])
    return None


# ---------------------------------------------------------------------------------------------- payloads


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    """Confidence policy thresholds (the edge engine's names; None keeps the engine's default)."""

    confidence: float | None = Field(default=None, ge=0.0, le=1.0,
                                     description="escalate segments scoring below")
    no_speech: float | None = Field(default=None, ge=0.0, le=1.0)
    avg_logprob: float | None = Field(default=None, ge=-20.0, le=0.0)
    compression_ratio: float | None = Field(default=None, ge=1.0, le=20.0)


class VadParams(_Strict):
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_speech_ms: int | None = Field(default=None, ge=0, le=10_000)
    min_silence_ms: int | None = Field(default=None, ge=0, le=10_000)
    speech_pad_ms: int | None = Field(default=None, ge=0, le=2_000)
    max_segment_s: float | None = Field(default=None, gt=0.0, le=30.0)


class ConfigParams(_Strict):
    """Live parameters. Every field is optional: unset means 'inherit' (device < fleet < engine default)."""

    thresholds: Thresholds | None = None
    escalation_budget_per_min: int | None = Field(default=None, ge=0, le=10_000)
    escalation_budget_fraction: float | None = Field(
        default=None, ge=0.0, le=1.0, description="most share of audio seconds escalated per rolling window"
    )
    beam_size: int | None = Field(default=None, ge=1, le=16)
    vad: VadParams | None = None
    prompt_words: tuple[str, ...] | None = Field(default=None, max_length=64)
    threads: int | None = Field(default=None, ge=1, le=64)
    # Contextual biasing phrases (docs/hotwords.md): at most MAX_PHRASES, each 1-64 characters, no markup.
    hotwords: tuple[str, ...] | None = Field(default=None, max_length=MAX_PHRASES)

    @field_validator("hotwords")
    @classmethod
    def _hotwords(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        if any(not w.strip() for w in v):
            raise ValueError("hot-word phrases must be non-empty")
        return check_hotwords(v)

    @field_validator("prompt_words")
    @classmethod
    def _words(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            for w in v:
                if not w.strip() or len(w) > 64:
                    raise ValueError("prompt words must be non-empty and at most 64 characters")
                check_prompt_text(w, f"prompt word {w[:64]!r}")
            # The engine joins the words into one prompt: markup split across words ("<|end", "oftext|>") must
            # be caught too. The separator holds no '<', '|' or '>', so any such join gives the same answer.
            check_prompt_text(" ".join(v), "prompt words together")
        return v

    def merged_over(self, base: ConfigParams) -> ConfigParams:
        """These params over `base`: set fields win, nested groups merge field by field."""
        out = base.model_dump(exclude_none=True)
        for key, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
        return ConfigParams.model_validate(out)


class _Signed(_Strict):
    schema_: int = Field(default=SCHEMA_VERSION, alias="schema")
    fleet: str = Field(pattern=NAME_PATTERN)
    device: str | None = Field(default=None, pattern=NAME_PATTERN)  # None: the fleet-wide message
    version: int = Field(ge=1, description="monotonic per fleet; a lower one than applied is stale")
    # The operator's clock when the message was made (the publisher passes it). Every published message carries
    # it; a payload without one parses as 0.0, so that a malformed message is NACKed for its actual fault.
    issued_at: float = 0.0
    signature: str | None = None  # base64 Ed25519 over signed_bytes()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema {v} (this build understands {SCHEMA_VERSION})")
        return v

    def signed_bytes(self) -> bytes:
        """Canonical JSON of everything but the signature: what the operator key signs."""
        doc = self.model_dump(mode="json", by_alias=True, exclude={"signature"})
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: Ed25519PrivateKey) -> Self:
        sig = base64.b64encode(signing.sign(key, self.signed_bytes())).decode()
        return self.model_copy(update={"signature": sig})

    def verify(self, key: Ed25519PublicKey) -> None:
        if not self.signature:
            raise VerificationError("unsigned message")
        try:
            sig = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("signature is not base64") from None
        signing.verify(key, self.signed_bytes(), sig, f"{type(self).__name__} v{self.version}")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class DesiredConfig(_Signed):
    params: ConfigParams


class Tombstone(_Signed):
    """A signed, versioned "cleared": the scope (fleet-wide or one device's) of `kind` holds no desired state
    any more (a device override falls back to the fleet's, a fleet config to the engine defaults).

    It replaces the empty retained payload that used to clear a topic: being signed and versioned, it is
    ordered with the other messages of its scope, so an older message cannot be replayed after it. `kind` is
    signed too, so a config clear cannot be replayed on a model topic (versions are shared by both kinds).
    `cleared` is how a parser tells a tombstone from the message it replaces (`parse_desired`)."""

    kind: Kind
    cleared: Literal[True] = True


class FetchInfo(_Strict):
    """Where to fetch the artifact: gRPC FetchModel(name, version) on `grpc_target` (None: device default)."""

    grpc_target: str | None = Field(default=None, max_length=256)
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)


class DesiredModel(_Signed):
    name: str = Field(pattern=NAME_PATTERN)
    model_version: str = Field(pattern=NAME_PATTERN)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, description="total bytes of the files the manifest lists")
    manifest_signature: str = Field(min_length=1, max_length=512, description="base64 of manifest.sig")
    fetch: FetchInfo


class DeviceState(_Strict):
    schema_: int = Field(default=SCHEMA_VERSION, alias="schema")
    fleet: str = Field(pattern=NAME_PATTERN)
    device: str = Field(pattern=NAME_PATTERN)
    online: bool
    config_version: int = 0
    model_name: str | None = None
    model_version: str | None = None
    model_seq: int = 0
    counters: dict[str, float] = Field(default_factory=dict)
    last_seen: float  # the device's clock when it sent this state

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @property
    def escalation_rate(self) -> float | None:
        seg = self.counters.get("segments", 0.0)
        return self.counters.get("escalated", 0.0) / seg if seg else None


class Ack(_Strict):
    schema_: int = Field(default=SCHEMA_VERSION, alias="schema")
    fleet: str = Field(pattern=NAME_PATTERN)
    device: str = Field(pattern=NAME_PATTERN)
    kind: Kind | Literal["unknown"]
    version: int | None = None  # the desired-state version acknowledged; None when unparsable
    accepted: bool
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)  # see clip_reason
    model_version: str | None = None
    at: float  # the device's clock when it made the ack

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def _loads(payload: bytes, what: str) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise UserError(f"{what}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what}: malformed JSON ({exc})") from None


def _short(exc: ValidationError) -> str:
    errs = exc.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "message"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def _validate(cls: type[T], doc: Any) -> T:
    if not isinstance(doc, dict):
        raise UserError(f"{cls.__name__}: expected a JSON object")
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        raise UserError(f"{cls.__name__}: {_short(exc)}") from None


def parse_payload(cls: type[T], payload: bytes) -> T:
    """Decode and validate one message; UserError with a one-line reason when it is not acceptable."""
    return _validate(cls, _loads(payload, cls.__name__))


D = TypeVar("D", DesiredConfig, DesiredModel)


def parse_desired(cls: type[D], payload: bytes) -> D | Tombstone:
    """A desired-state message as it arrives on a config or model topic: `cls`, or a Tombstone when it carries
    `cleared` (no DesiredConfig or DesiredModel may: extra fields are refused). UserError as parse_payload."""
    doc = _loads(payload, cls.__name__)
    if isinstance(doc, dict) and "cleared" in doc:
        return _validate(Tombstone, doc)
    return _validate(cls, doc)


def clip_reason(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """`reason` cut to `limit` characters, ending with an ellipsis when it was longer: an Ack must never fail to
    build because an error message (a validation error naming a 2000-character key, a long install error) is
    too long to report."""
    return reason if len(reason) <= limit else reason[: limit - len(ELLIPSIS)] + ELLIPSIS


def peek_version(payload: bytes) -> int | None:
    """Best-effort version of a message that failed validation, so the NACK can name it."""
    try:
        doc = json.loads(payload)
        v = doc.get("version") if isinstance(doc, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    except (UnicodeDecodeError, ValueError):
        return None
