"""Streams: audio in pieces, chunked encoding with cached context, results and endpoints.

Modelled on sherpa-onnx's stream objects: `accept_waveform`, `input_finished`,
`is_ready`, `decode`, `result`, `is_endpoint`, `reset`. `decode_streams` is the
one place that runs the model, so batching across streams goes there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from speechadapt.asr.audio import StreamingResampler
from speechadapt.asr.decoding import GreedyCTC, Hypothesis
from speechadapt.asr.features import StreamingFbank
from speechadapt.asr.inference import AsrModel


@dataclass(frozen=True)
class EndpointConfig:
    enabled: bool = True
    stop_history_ms: int = 800  # trailing non-speech after recognised speech that ends an utterance
    max_utterance_ms: int = 30000  # force a final after this much audio
    idle_reset_ms: int = 5000  # with nothing recognised, restart the utterance window after this


class Stream:
    def __init__(self, model: AsrModel, input_rate: int, endpoint: EndpointConfig = EndpointConfig()):
        self.model = model
        self.endpoint_config = endpoint
        self._resampler = StreamingResampler(input_rate, model.sample_rate)
        self._fbank = StreamingFbank(model.features)
        self._pending = torch.zeros(0, model.features.n_mels)
        self._context = model.net.make_context()
        self._decoder = GreedyCTC(model.tokenizer, model.frame_seconds)
        self._chunk = model.net.cfg.chunk_frames * model.net.cfg.stack  # fbank frames per chunk
        self.finished = False
        self.samples_in = 0  # at the input rate
        self.input_rate = input_rate

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

    def _push(self, samples: np.ndarray) -> None:
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

    @property
    def audio_seconds(self) -> float:
        return self.samples_in / self.input_rate

    def result(self) -> Hypothesis:
        return self._decoder.hypothesis()

    def is_endpoint(self) -> bool:
        cfg = self.endpoint_config
        if not cfg.enabled:
            return False
        dec = self._decoder
        if dec.frames * dec.frame_seconds * 1000 >= cfg.max_utterance_ms and dec.has_speech:
            return True
        return dec.has_speech and dec.trailing_blank_seconds() * 1000 >= cfg.stop_history_ms

    def is_idle(self) -> bool:
        """Nothing recognised for `idle_reset_ms`: the utterance window can move on."""
        dec = self._decoder
        return not dec.has_speech and dec.frames * dec.frame_seconds * 1000 >= self.endpoint_config.idle_reset_ms

    def reset(self) -> None:
        """Start a new utterance where decoding stands; the encoder keeps its context."""
        self._decoder.reset()


@torch.inference_mode()
def decode_streams(streams: list[Stream]) -> None:
    """Decode one chunk of each ready stream (callers check endpoints between calls)."""
    for s in streams:
        if s.is_ready():
            chunk = s.next_chunk()
            s.accept_logits(s.model.net.forward_chunk(chunk[None], s.context)[0])
