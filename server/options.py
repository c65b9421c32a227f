"""Request checking: proto configs become typed options, or an InvalidRequest that says what to fix."""

from __future__ import annotations

from dataclasses import dataclass

from speechadapt.asr import EndpointConfig
from speechadapt.asr.beam import MAX_PHRASES
from speechadapt.quote import quote
from speechadapt.v1 import recognizer_pb2 as pb

MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 8
MAX_ALTERNATIVES = 10


class InvalidRequest(ValueError):
    """Answered with INVALID_ARGUMENT."""


@dataclass(frozen=True)
class RecognitionOptions:
    encoding: int
    sample_rate: int  # 0 = from the container header
    channels: int  # 0 = from the container header
    model: str
    language_code: str
    max_alternatives: int
    word_time_offsets: bool
    endpoint: EndpointConfig
    interim_results: bool = False
    single_utterance: bool = False
    contexts: tuple[tuple[tuple[str, ...], float], ...] = ()  # speech_contexts: (phrases, boost)


def _endpoint(cfg: pb.RecognitionConfig) -> EndpointConfig:
    if not cfg.HasField("endpointing"):
        return EndpointConfig()
    e = cfg.endpointing
    default = EndpointConfig()
    stop = e.stop_history_ms or default.stop_history_ms
    longest = e.max_utterance_ms or default.max_utterance_ms
    if not 100 <= stop <= 10000:
        raise InvalidRequest(f"endpointing.stop_history_ms must be 100..10000 (or 0 for the default), got {e.stop_history_ms}")
    if not 1000 <= longest <= 300000:
        raise InvalidRequest(f"endpointing.max_utterance_ms must be 1000..300000 (or 0 for the default), got {e.max_utterance_ms}")
    if not -1 <= e.vad_aggressiveness <= 3:
        raise InvalidRequest(f"endpointing.vad_aggressiveness must be -1 (off), 0 (default) or 1..3, got {e.vad_aggressiveness}")
    vad = {0: default.vad, -1: None}.get(e.vad_aggressiveness, e.vad_aggressiveness)
    return EndpointConfig(enabled=not e.disabled, stop_history_ms=stop, max_utterance_ms=longest, vad=vad)


def check_config(cfg: pb.RecognitionConfig, *, streaming: bool) -> RecognitionOptions:
    enc = cfg.encoding
    if enc == pb.ENCODING_UNSPECIFIED:
        raise InvalidRequest("config.encoding is required: LINEAR16 (raw 16-bit PCM), WAV or FLAC")
    if enc not in (pb.LINEAR16, pb.WAV, pb.FLAC):
        raise InvalidRequest(f"config.encoding {enc} is not supported: use LINEAR16, WAV or FLAC")
    if enc == pb.FLAC and streaming:
        raise InvalidRequest("FLAC is accepted by Recognize only; stream LINEAR16 or WAV")
    rate = cfg.sample_rate_hertz
    if enc == pb.LINEAR16 and rate == 0:
        raise InvalidRequest("config.sample_rate_hertz is required for LINEAR16 (8000..48000)")
    if rate != 0 and not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidRequest(f"config.sample_rate_hertz must be {MIN_RATE}..{MAX_RATE} (the server resamples), got {rate}")
    ch = cfg.audio_channel_count
    if not 0 <= ch <= MAX_CHANNELS:
        raise InvalidRequest(f"config.audio_channel_count must be 0..{MAX_CHANNELS}, got {ch}")
    if enc == pb.LINEAR16 and ch == 0:
        ch = 1
    n = cfg.max_alternatives
    if not 0 <= n <= MAX_ALTERNATIVES:
        raise InvalidRequest(f"config.max_alternatives must be 0..{MAX_ALTERNATIVES}, got {n}")
    contexts = tuple((tuple(c.phrases), c.boost) for c in cfg.speech_contexts)
    if sum(len(p) for p, _ in contexts) > MAX_PHRASES:
        raise InvalidRequest(f"config.speech_contexts holds more than {MAX_PHRASES} phrases; send the ones that matter most")
    return RecognitionOptions(
        encoding=enc,
        sample_rate=rate,
        channels=ch,
        model=cfg.model.strip(),
        language_code=cfg.language_code.strip(),
        max_alternatives=max(1, n),
        word_time_offsets=cfg.enable_word_time_offsets,
        endpoint=_endpoint(cfg),
        contexts=contexts,
    )


def check_streaming_config(scfg: pb.StreamingRecognitionConfig) -> RecognitionOptions:
    if not scfg.HasField("config"):
        raise InvalidRequest("streaming_config.config is required (encoding, sample_rate_hertz, ...)")
    opts = check_config(scfg.config, streaming=True)
    return RecognitionOptions(**{**opts.__dict__, "interim_results": scfg.interim_results, "single_utterance": scfg.single_utterance})


def check_language(opts: RecognitionOptions, model_language: str, model_name: str) -> None:
    tag = opts.language_code.lower()
    if tag and tag.split("-")[0] != model_language.lower().split("-")[0]:
        raise InvalidRequest(
            f"config.language_code {quote(opts.language_code)} does not match model {model_name} ({model_language}); "
            "leave it empty or pick a model in that language"
        )
