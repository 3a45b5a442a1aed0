from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Audio(_message.Message):
    __slots__ = ("encoding", "sample_rate", "data")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[Audio.Encoding]
        PCM16: _ClassVar[Audio.Encoding]
        FLAC: _ClassVar[Audio.Encoding]
        OPUS: _ClassVar[Audio.Encoding]
    ENCODING_UNSPECIFIED: Audio.Encoding
    PCM16: Audio.Encoding
    FLAC: Audio.Encoding
    OPUS: Audio.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    encoding: Audio.Encoding
    sample_rate: int
    data: bytes
    def __init__(self, encoding: _Optional[_Union[Audio.Encoding, str]] = ..., sample_rate: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class EdgeHypothesis(_message.Message):
    __slots__ = ("text", "avg_logprob", "no_speech_prob", "compression_ratio", "min_token_prob", "mean_entropy", "confidence", "model_version")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKEN_PROB_FIELD_NUMBER: _ClassVar[int]
    MEAN_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    min_token_prob: float
    mean_entropy: float
    confidence: float
    model_version: str
    def __init__(self, text: _Optional[str] = ..., avg_logprob: _Optional[float] = ..., no_speech_prob: _Optional[float] = ..., compression_ratio: _Optional[float] = ..., min_token_prob: _Optional[float] = ..., mean_entropy: _Optional[float] = ..., confidence: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("segment_id", "device_id", "audio", "language", "edge", "prompt", "segment_start")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_START_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    device_id: str
    audio: Audio
    language: str
    edge: EdgeHypothesis
    prompt: str
    segment_start: float
    def __init__(self, segment_id: _Optional[str] = ..., device_id: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., language: _Optional[str] = ..., edge: _Optional[_Union[EdgeHypothesis, _Mapping]] = ..., prompt: _Optional[str] = ..., segment_start: _Optional[float] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("start", "end", "text", "avg_logprob", "no_speech_prob")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    def __init__(self, start: _Optional[float] = ..., end: _Optional[float] = ..., text: _Optional[str] = ..., avg_logprob: _Optional[float] = ..., no_speech_prob: _Optional[float] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("queue_ms", "inference_ms", "total_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("segment_id", "text", "language", "segments", "avg_logprob", "model_name", "model_version", "timing", "cached", "device_id", "temperature", "no_speech_prob")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    text: str
    language: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    avg_logprob: float
    model_name: str
    model_version: str
    timing: ServerTiming
    cached: bool
    device_id: str
    temperature: float
    no_speech_prob: float
    def __init__(self, segment_id: _Optional[str] = ..., text: _Optional[str] = ..., language: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., avg_logprob: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ..., cached: _Optional[bool] = ..., device_id: _Optional[str] = ..., temperature: _Optional[float] = ..., no_speech_prob: _Optional[float] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("segment_id", "stream_id")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    stream_id: str
    def __init__(self, segment_id: _Optional[str] = ..., stream_id: _Optional[str] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("name", "version", "file", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    file: str
    offset: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("file", "offset", "data", "total_size", "sha256")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
