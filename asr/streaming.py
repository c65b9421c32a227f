"""Streams: audio in pieces, chunked encoding with cached context, results and endpoints.

Modelled on sherpa-onnx's stream objects: `accept_waveform`, `input_finished`,
`is_ready`, `decode`, `result`, `is_endpoint`, `reset`. `decode_streams` is the
one place that runs the model, so batching across streams goes there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from speechadapt.asr.audio import StreamingResampler
from speechadapt.asr.beam import Phrase
from speechadapt.asr.decoding import GreedyCTC, Hypothesis
from speechadapt.asr.features import StreamingFbank
from speechadapt.asr.inference import AsrModel


@dataclass(frozen=True)
class EndpointConfig:
    enabled: bool = True
    stop_history_ms: int = 800  # trailing non-speech after recognised speech that ends an utterance
    max_utterance_ms: int = 30000  # force a final after this much audio
    idle_reset_ms: int = 5000  # with nothing recognised, restart the utterance window after this
    vad: int | None = 2  # webrtcvad aggressiveness 0..3 that must also hear `stop_history_ms` of non-speech; None = off


class VadTracker:
    """Trailing non-speech, in seconds, by webrtcvad over 30 ms frames of the (resampled) input."""

    RATES = (8000, 16000, 32000, 48000)

    def __init__(self, aggressiveness: int, rate: int):
        import webrtcvad

        if rate not in self.RATES:
            raise ValueError(f"webrtcvad runs at {self.RATES} Hz, not {rate}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self.rate, self.frame = rate, rate * 30 // 1000
        self._buf = np.zeros(0, np.int16)
        self.silent_frames = 0
        self.heard_speech = False

    def accept(self, samples: np.ndarray) -> None:
        pcm = np.clip(samples * 32768, -32768, 32767).astype(np.int16)
        self._buf = np.concatenate([self._buf, pcm])
        n = len(self._buf) // self.frame
        for i in range(n):
            if self._vad.is_speech(self._buf[i * self.frame : (i + 1) * self.frame].tobytes(), self.rate):
                self.silent_frames, self.heard_speech = 0, True
            else:
                self.silent_frames += 1
        self._buf = self._buf[n * self.frame :]

    @property
    def trailing_silence(self) -> float:
        return self.silent_frames * 0.03


class AudioIn:
    """The input side every stream kind shares: audio at the stream's rate, resampled to the model's, handed to
    the kind's `_push`; `input_finished` flushes the resampler."""

    def _init_input(self, input_rate: int, model_rate: int) -> None:
        self._resampler = StreamingResampler(input_rate, model_rate)
        self.input_rate = input_rate
        self.samples_in = 0  # at the input rate
        self.finished = False

    def accept_waveform(self, samples: np.ndarray) -> None:
        """float32 mono samples at the stream's input rate."""
        if self.finished:
            raise RuntimeError("accept_waveform after input_finished")
        self.samples_in += len(samples)
        self._push(self._resampler.process(samples))

    def input_finished(self) -> None:
        if not self.finished:
            self._push(self._resampler.flush())
            self.finished = True

    @property
    def audio_seconds(self) -> float:
        return self.samples_in / self.input_rate

    def _push(self, samples: np.ndarray) -> None:
        raise NotImplementedError


class Stream(AudioIn):
    def __init__(self, model: AsrModel, input_rate: int, endpoint: EndpointConfig = EndpointConfig()):
        self.model = model
        self.endpoint_config = endpoint
        self._init_input(input_rate, model.sample_rate)
        self._fbank = StreamingFbank(model.features)
        self._pending = torch.zeros(0, model.features.n_mels)
        self._context = model.net.make_context()
        self._decoder = GreedyCTC(model.tokenizer, model.frame_seconds)
        self._chunk = model.net.cfg.chunk_frames * model.net.cfg.stack  # fbank frames per chunk
        self._vad = VadTracker(endpoint.vad, model.sample_rate) if endpoint.enabled and endpoint.vad is not None else None

    def _push(self, samples: np.ndarray) -> None:
        if len(samples) and self._vad is not None:
            self._vad.accept(samples)
        if len(samples):
            feats = self._fbank.accept(samples)
            if len(feats):
                self._pending = torch.cat([self._pending, feats])

    def is_ready(self) -> bool:
        stack = self.model.net.cfg.stack
        return len(self._pending) >= self._chunk or (self.finished and len(self._pending) >= stack)

    def next_chunk(self) -> torch.Tensor:
        """Take the next chunk of fbank frames (a short one only at the end of input)."""
        n = self._chunk if len(self._pending) >= self._chunk else len(self._pending) - len(self._pending) % self.model.net.cfg.stack
        chunk, self._pending = self._pending[:n], self._pending[n:]
        return chunk

    def accept_logits(self, logits: torch.Tensor) -> None:
        self._decoder.update(logits)

    @property
    def context(self):
        return self._context

    def decode(self) -> None:
        """Decode every ready chunk (no endpoint checks between them)."""
        while self.is_ready():
            decode_streams([self])

    def decode_chunk(self) -> None:
        """Decode the next ready chunk only (check `is_endpoint` after each)."""
        decode_streams([self])

    @staticmethod
    def decode_batch(streams: list["Stream"]) -> int:
        return decode_ctc_streams(streams)


    def result(self) -> Hypothesis:
        """The utterance so far, greedy (cheap: for partial results)."""
        return self._decoder.hypothesis()

    def final_result(self, nbest: int = 1, phrases: tuple[Phrase, ...] = ()) -> list[Hypothesis]:
        """The utterance so far with the model's full decoder (beam search, n-best, phrases)."""
        dec = self._decoder
        return self.model.decode(dec.utterance_logits(), dec.start_frame, nbest, phrases)

    def is_endpoint(self) -> bool:
        cfg = self.endpoint_config
        if not cfg.enabled:
            return False
        dec = self._decoder
        if dec.frames * dec.frame_seconds * 1000 >= cfg.max_utterance_ms and dec.has_speech:
            return True
        if not dec.has_speech:
            return False
        quiet_ms = dec.trailing_blank_seconds() * 1000
        if self._vad is None or quiet_ms >= 2 * cfg.stop_history_ms:
            return quiet_ms >= cfg.stop_history_ms
        return quiet_ms >= cfg.stop_history_ms and self._vad.trailing_silence * 1000 >= cfg.stop_history_ms

    def is_idle(self) -> bool:
        """Nothing recognised for `idle_reset_ms`: the utterance window can move on."""
        dec = self._decoder
        return not dec.has_speech and dec.frames * dec.frame_seconds * 1000 >= self.endpoint_config.idle_reset_ms

    def reset(self) -> None:
        """Start a new utterance where decoding stands; the encoder keeps its context."""
        self._decoder.reset()


def _signature(s: Stream, chunk_len: int) -> tuple:
    """Streams with equal signatures can share a forward pass: same network, chunk length and context lengths."""
    layer = s.context.layers[0]
    left = -1 if layer.mha_left_context is None else layer.mha_left_context.shape[1]
    conv = -1 if layer.dcconv_left_context is None else layer.dcconv_left_context.shape[1]
    return id(s.model.net), chunk_len, left, conv


def _stack(contexts: list) -> object:
    """One batched streaming context from several of the same shape (a new object; inputs untouched)."""
    first = contexts[0]
    layers = []
    for j, layer in enumerate(first.layers):
        cat = {}
        for name in ("mha_left_context", "dcconv_left_context"):
            parts = [getattr(c.layers[j], name) for c in contexts]
            cat[name] = None if parts[0] is None else torch.cat(parts)
        layers.append(replace(layer, **cat))
    return replace(first, layers=layers)


def _unstack(batched, contexts: list) -> None:
    for i, c in enumerate(contexts):
        for j, layer in enumerate(c.layers):
            for name in ("mha_left_context", "dcconv_left_context"):
                value = getattr(batched.layers[j], name)
                setattr(layer, name, None if value is None else value[i : i + 1].clone())


def decode_streams(streams: list) -> int:
    """Decode the next ready piece of each stream, whatever its model: streams of one kind go to their
    class's `decode_batch` together (batched across streams). Returns the number of forward passes run."""
    kinds: dict[type, list] = {}
    for s in streams:
        kinds.setdefault(type(s), []).append(s)
    return sum(kind.decode_batch(members) for kind, members in kinds.items())


@torch.inference_mode()
def decode_ctc_streams(streams: list[Stream]) -> int:
    """Decode one chunk of each ready stream (callers check endpoints between calls).

    Streams whose chunks and cached contexts have the same shape (every stream past its first second,
    whatever model version it runs, as long as the network is shared) go through the encoder in one
    batched forward pass. Returns the number of forward passes run."""
    groups: dict[tuple, list[tuple[Stream, torch.Tensor]]] = {}
    for s in streams:
        if s.is_ready():
            chunk = s.next_chunk()
            groups.setdefault(_signature(s, len(chunk)), []).append((s, chunk))
    for members in groups.values():
        net = members[0][0].model.net
        if len(members) == 1:
            s, chunk = members[0]
            s.accept_logits(net.forward_chunk(chunk[None], s.context)[0])
            continue
        contexts = [s.context for s, _ in members]
        batched = _stack(contexts)
        logits = net.forward_chunk(torch.stack([c for _, c in members]), batched)
        _unstack(batched, contexts)
        for i, (s, _) in enumerate(members):
            s.accept_logits(logits[i])
    return len(groups)
