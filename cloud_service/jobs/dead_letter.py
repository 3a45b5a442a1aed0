"""Submit jobs that keep failing: their last error, the dead-letter stream, and the failed result a device can read.

A job whose decode raises stays pending and is delivered again (XAUTOCLAIM) after `claim_min_idle_ms`, as after a
worker crash; Redis counts the deliveries. Once a job has failed `max_job_attempts` deliveries (or was delivered
more often than that without ever finishing: it kills its worker), it is copied to the dead-letter stream with its
error, a failed result is stored and published for its device, and it is acknowledged: a poison pill ends there
instead of crashing every worker in turn. Synchronous redis (the worker's client).
"""

from __future__ import annotations

import json
import time
from typing import Any

from cloud_service.jobs.store import STATS_KEY, STREAM_MAXLEN

MAX_ERROR_CHARS = 500  # the last error kept with a job: enough to tell one failure from another


def failed_key(device_id: str, segment_id: str) -> str:
    """Where a dead-lettered job's failed result is kept (next to asr:result:{device}:{segment})."""
    return f"asr:failed:{device_id}:{segment_id}"


def error_key(stream: str, entry_id: str) -> str:
    return f"asr:job-error:{stream}:{entry_id}"


def deliveries(redis: Any, stream: str, group: str, entry_id: str) -> int:
    """How many times the group has delivered the entry (1 when Redis no longer says)."""
    pending = redis.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    return int(pending[0]["times_delivered"]) if pending else 1


def record_error(redis: Any, stream: str, entry_id: str, error: str, ttl_s: int) -> None:
    """Keep a failed delivery's error, for the dead letter should a later delivery never get as far."""
    redis.set(error_key(stream, entry_id), error[:MAX_ERROR_CHARS], ex=ttl_s)


def last_error(redis: Any, stream: str, entry_id: str) -> str | None:
    raw = redis.get(error_key(stream, entry_id))
    return raw.decode(errors="replace") if raw is not None else None


def failure_payload(device: str, segment_id: str, entry_id: str, error: str, attempts: int) -> str:
    """The JSON a device reads for a job given up on: on its results topic and at failed_key. `failed` tells it
    apart from a result (a TranscribeResponse as JSON)."""
    return json.dumps({
        "segment_id": segment_id, "device_id": device, "failed": True, "status": "INTERNAL",
        "error": error[:MAX_ERROR_CHARS], "attempts": attempts, "stream_id": entry_id,
    })


def dead_letter(redis: Any, *, stream: str, dead_stream: str, entry_id: str, fields: dict[bytes, bytes],
                device: str, segment_id: str, error: str, attempts: int, ttl_s: int) -> str:
    """Copy the job (its request included, for replay) to `dead_stream` and store its failed result, once: a
    repeated call for the same job (its ack was lost) adds nothing. Returns the failure payload to publish."""
    payload = failure_payload(device, segment_id, entry_id, error, attempts)
    if redis.set(failed_key(device, segment_id), payload, nx=True, ex=ttl_s):
        redis.xadd(dead_stream, {**fields, b"entry_id": entry_id.encode(), b"error": error[:MAX_ERROR_CHARS].encode(),
                                 b"attempts": str(attempts).encode(), b"failed_at": f"{time.time():.3f}".encode()},
                   maxlen=STREAM_MAXLEN, approximate=True)
        redis.hincrby(STATS_KEY, "jobs_dead_lettered", 1)
    redis.delete(error_key(stream, entry_id))
    stored = redis.get(failed_key(device, segment_id))  # the first one written, should this be a repeat
    return str(stored.decode()) if stored is not None else payload
