"""One recognition: request audio in, result messages out (streaming and unary share it)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import numpy as np
from google.protobuf.duration_pb2 import Duration

from speechadapt.asr import AsrModel, Hypothesis
from speechadapt.asr.streaming import decode_streams
from speechadapt.server.audio_input import AudioInput
from speechadapt.server.batcher import Batcher
from speechadapt.server.metrics import Metrics
from speechadapt.server.options import InvalidRequest, RecognitionOptions
from speechadapt.v1 import recognizer_pb2 as pb


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def alternative(hyp: Hypothesis, words: bool) -> pb.SpeechRecognitionAlternative:
    alt = pb.SpeechRecognitionAlternative(transcript=hyp.text, confidence=hyp.confidence)
    if words:
        alt.words.extend(
            pb.WordInfo(word=w.word, start_offset=duration(w.start), end_offset=duration(w.end), confidence=w.confidence)
            for w in hyp.words
        )
    return alt


def common_prefix_ratio(old: str, new: str) -> float:
    n = 0
    for a, b in zip(old, new):
        if a != b:
            break
        n += 1
    return n / len(new) if new else 0.0


class RecognitionSession:
    """Feed audio, get `StreamingRecognitionResult`s. `done` is set once a single utterance ended.

    With `metrics`: the audio received, the real-time factor (time spent waiting for decoding over the audio's
    duration) of each final result, or of the whole recognition when all its audio came at once
    (`accept_samples` with a rate: Recognize), and for streams, the time from the end of audio to the last final."""

    def __init__(self, model: AsrModel, opts: RecognitionOptions, executor: Executor | None = None,
                 batcher: Batcher | None = None, metrics: Metrics | None = None):
        """Raises InvalidRequest when the request's phrases do not fit the model (e.g. its alphabet).
        Chunks go through `batcher` (shared forward passes) when given, else one by one on `executor`."""
        self.model, self.opts, self.executor, self.batcher, self.metrics = model, opts, executor, batcher, metrics
        try:
            self.phrases = model.parse_phrases(opts.contexts)
        except ValueError as e:
            raise InvalidRequest(f"config.speech_contexts: {e}") from e
        self.input = AudioInput(opts)
        self.stream = None  # the model's stream object (speechadapt.asr.streaming.Stream or WhisperStream)
        self.done = False
        self.finals = 0
        self._last_interim = ""
        self._whole = False  # all the audio came in one accept_samples call (Recognize)
        self._compute = 0.0  # seconds spent waiting for decoding, since the last real-time factor observation
        self._audio = 0.0  # seconds of audio received, since the same

    async def accept(self, data: bytes) -> list[pb.StreamingRecognitionResult]:
        if self.done:
            return []
        self.accept_samples(self.input.feed(data))
        return await self._drain()

    def accept_samples(self, samples: np.ndarray, rate: int | None = None) -> None:
        """Audio at the request's rate; `rate` (given only when this is all the audio) creates the stream."""
        self._whole = self._whole or rate is not None
        if self.stream is None and (rate or self.input.ready):
            self.stream = self.model.new_stream(rate or self.input.rate, self.opts.endpoint, self.phrases,
                                                interim=self.opts.interim_results)
        if self.stream is not None and len(samples):
            self.stream.accept_waveform(samples)
            seconds = len(samples) / self.stream.input_rate
            self._audio += seconds
            if self.metrics is not None:
                self.metrics.audio_received(self.model.name, seconds)

    async def finish(self) -> list[pb.StreamingRecognitionResult]:
        """End of audio: the rest of the audio is decoded and a last final given."""
        if self.done:
            return []
        if self.stream is None or self.stream.samples_in == 0:
            raise InvalidRequest("no audio received: send audio_content after the config (at least one non-empty chunk)")
        end_of_audio = time.perf_counter()
        self.stream.input_finished()
        out = await self._drain()
        if not self.done:
            hyps = await self._final_hypotheses()
            if hyps[0].text or self.finals == 0:
                out.append(self._final(hyps))
        if self.metrics is not None:
            if self._whole:
                self._observe_rtf()
            elif out and out[-1].is_final:
                self.metrics.final_after_end(self.model.name, time.perf_counter() - end_of_audio)
        return out

    async def _timed(self, awaitable):
        """Await a decoding step, counting the time towards the real-time factor."""
        start = time.perf_counter()
        try:
            return await awaitable
        finally:
            self._compute += time.perf_counter() - start

    def _observe_rtf(self) -> None:
        if self.metrics is not None:
            self.metrics.decoded(self.model.name, self._compute, self._audio)
        self._compute = self._audio = 0.0

    async def _final_hypotheses(self) -> list[Hypothesis]:
        loop = asyncio.get_running_loop()
        return await self._timed(loop.run_in_executor(self.executor, self.stream.final_result,
                                                      self.opts.max_alternatives, self.phrases))

    async def _drain(self) -> list[pb.StreamingRecognitionResult]:
        s, out = self.stream, []
        if s is None:
            return out
        loop = asyncio.get_running_loop()
        while True:
            # endpoints are checked before every decode too: a stream whose endpoint comes from the audio itself
            # (webrtcvad, for window models) ends its utterance without waiting for another interim decode
            if s.is_endpoint():
                out.append(self._final(await self._final_hypotheses()))
                s.reset()
                if self.opts.single_utterance:
                    self.done = True
                    return out
                continue
            if s.is_idle():
                s.reset()
            if not s.is_ready():
                break
            if self.batcher is not None:
                await self._timed(self.batcher.decode(s))
            else:
                await self._timed(loop.run_in_executor(self.executor, decode_streams, [s]))
        if self.opts.interim_results:
            hyp = s.result()
            if hyp.text and hyp.text != self._last_interim:
                out.append(
                    pb.StreamingRecognitionResult(
                        alternatives=[alternative(hyp, False)],
                        is_final=False,
                        stability=s.stability() if hasattr(s, "stability") else common_prefix_ratio(self._last_interim, hyp.text),
                        result_start_offset=duration(hyp.start),
                        result_end_offset=duration(hyp.end),
                    )
                )
                self._last_interim = hyp.text
        return out

    def _final(self, hyps: list[Hypothesis]) -> pb.StreamingRecognitionResult:
        self.finals += 1
        self._last_interim = ""
        if not self._whole and self._audio > 0:  # a stream: one observation per utterance
            self._observe_rtf()
        hyp = hyps[0]
        return pb.StreamingRecognitionResult(
            alternatives=[alternative(h, self.opts.word_time_offsets) for h in hyps],
            is_final=True,
            stability=1.0,
            result_start_offset=duration(hyp.start),
            result_end_offset=duration(hyp.end),
        )
