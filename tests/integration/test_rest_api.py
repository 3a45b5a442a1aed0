"""The OpenAI-compatible REST API (cloud_service/http) against a real server: tiny.en weights, real Redis, real
recorded speech, driven by the official `openai` client and by raw multipart uploads for the hostile cases."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from cloud_service.asr.model import AsrModel
from cloud_service.http.serve import bound_port, start_http, stop_http
from testkit.servers import RedisServer
from tests.audio_fixtures import data_prompts
from tests.integration.cloud_fixtures import ServerThread, cloud_config, cloud_redis, register_device  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.redis]

MAX_AUDIO_S = 10.0


class Rest:
    def __init__(self, thread: ServerThread, port: int, token: str, handle: Any) -> None:
        self.thread, self.port, self.token, self.handle = thread, port, token, handle
        self.base = f"http://127.0.0.1:{port}/v1"

    def client(self, token: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base, api_key=token or self.token, max_retries=0)

    def post(self, data: bytes, token: str | None = None, **fields: str) -> requests.Response:
        return requests.post(f"{self.base}/audio/transcriptions", files={"file": ("a.wav", data)}, data=fields,
                          headers={"Authorization": f"Bearer {token or self.token}"}, timeout=60)


@pytest.fixture(scope="module")
def rest(cloud_redis: RedisServer,  # noqa: F811
          tiny_asr: AsrModel, tiny_checkpoint: Path) -> Iterator[Rest]:
    config = cloud_config(cloud_redis.url, model=str(tiny_checkpoint), max_audio_s=MAX_AUDIO_S)
    token = register_device(cloud_redis.url, "rest-dev")
    with ServerThread(config, tiny_asr) as thread:
        handle = thread.run(start_http(config, thread.servicer, "127.0.0.1:0"))
        try:
            yield Rest(thread, bound_port(handle[0]), token, handle)
        finally:
            thread.run(stop_http(*handle))


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, str]:
    prompt = next(p for p in data_prompts("en") if p.id == "cannot-complete-as-dialed")
    return prompt.wav.read_bytes(), prompt.text


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalpha() or c.isspace()).split()


def test_json_transcribes_real_speech(rest: Rest, speech: tuple[bytes, str]) -> None:
    data, expected = speech
    got = rest.client().audio.transcriptions.create(model="whisper-1", file=("a.wav", data))
    assert words(got.text) == words(expected)


def test_text_srt_vtt(rest: Rest, speech: tuple[bytes, str]) -> None:
    data, expected = speech
    c = rest.client()
    text = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="text")
    assert words(str(text)) == words(expected)
    srt = str(c.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="srt"))
    assert srt.startswith("1\n00:00:0") and " --> " in srt and "dialed" in srt.lower()
    vtt = str(c.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="vtt"))
    assert vtt.startswith("WEBVTT\n\n00:00:0") and "." in vtt.split(" --> ")[0]


def test_verbose_json_segments_and_words(rest: Rest, speech: tuple[bytes, str]) -> None:
    data, expected = speech
    got = rest.client().audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    duration = sf.info(io.BytesIO(data)).duration
    assert got.language == "en" and abs(got.duration - duration) < 0.01
    assert got.segments and got.segments[0].start >= 0 and got.segments[-1].end <= duration + 0.5
    assert got.words is not None
    assert [w.lower() for w in words(" ".join(w.word for w in got.words))] == words(expected)
    starts = [w.start for w in got.words]
    assert starts == sorted(starts) and all(w.end >= w.start for w in got.words)


def test_models_lists_alias_and_checkpoint(rest: Rest, tiny_asr: AsrModel) -> None:
    ids = [m.id for m in rest.client().models.list()]
    assert ids == ["whisper-1", tiny_asr.name]


def _error(resp: requests.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = json.loads(resp.text)["error"]
    assert set(body) >= {"message", "type", "code"} and "Traceback" not in body["message"]
    return dict(body)


def test_garbage_and_empty_uploads_are_400(rest: Rest) -> None:
    assert "decode" in _error(rest.post(b"\x00garbage" * 100), 400)["message"]
    assert "empty" in _error(rest.post(b""), 400)["message"]


def test_too_long_audio_is_400(rest: Rest) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int((MAX_AUDIO_S + 2) * 16000), dtype=np.float32), 16000, format="WAV")
    assert "limit" in _error(rest.post(buf.getvalue()), 400)["message"]


def test_too_large_upload_is_413(rest: Rest) -> None:
    assert _error(rest.post(b"RIFF" + b"\x00" * (9 * 1024 * 1024)), 413)["code"] == "file_too_large"


def test_bad_fields_are_400(rest: Rest, speech: tuple[bytes, str]) -> None:
    data, _ = speech
    assert _error(rest.post(data, response_format="xml"), 400)["param"] == "response_format"
    assert _error(rest.post(data, temperature="hot"), 400)["code"] == "invalid_field"  # FastAPI's 422, reshaped
    assert _error(rest.post(data, prompt="<|endoftext|>"), 400)["code"] == "invalid_field"


def test_missing_or_bad_token_is_401(rest: Rest, speech: tuple[bytes, str]) -> None:
    data, _ = speech
    with pytest.raises(openai.AuthenticationError):
        rest.client(token="rest-dev.wrong").audio.transcriptions.create(model="whisper-1", file=("a.wav", data))
    resp = requests.post(f"{rest.base}/audio/transcriptions", files={"file": ("a.wav", data)}, timeout=60)
    assert _error(resp, 401)["code"] == "missing_token"


def test_prompt_list_reaches_the_decoder_as_hotwords(rest: Rest, speech: tuple[bytes, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt that is a list of short phrases biases the decode (docs/hotwords.md); prose only prompts."""
    from cloud_service.asr import hotwords

    seen: list[tuple[str, ...]] = []
    real = hotwords.add_hotword_filter

    def spy(task: Any, phrases: tuple[str, ...], options: Any = None) -> Any:
        seen.append(phrases)
        return real(task, phrases, options)

    monkeypatch.setattr(hotwords, "add_hotword_filter", spy)
    data, expected = speech
    c = rest.client()
    got = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), prompt="Kitchen lights, dialed")
    assert ("Kitchen lights", "dialed") in seen
    assert words(got.text) == words(expected)  # no distractor inserted, the said words kept
    seen.clear()
    c.audio.transcriptions.create(model="whisper-1", file=("a.wav", data),
                                  prompt="This is a recorded message from the phone company.")
    assert seen and all(p == () for p in seen)
