"""Streaming with Whisper: re-decode the growing utterance, commit what two decodes agree on.

Whisper reads whole windows, so a stream keeps the current utterance's audio and, every
`interim_step_s` of new audio, decodes all of it again (greedy), as whisper_streaming does. The words
that the last two decodes agree on from the start (local agreement) are committed: later interim
results keep them, and `stability` is the committed share of the text. An utterance ends when webrtcvad
has heard `stop_history_ms` of non-speech after speech (or at `max_utterance_ms`, capped below Whisper's
30 s window); the final is one beam-search decode of the utterance with word times and n-best.

The same calls as `speechadapt.asr.streaming.Stream` (sherpa-onnx style), so the server drives both
alike; `decode_batch` decodes the ready streams of one model in one batched CTranslate2 call.
"""

from __future__ import annotations

import numpy as np

from speechadapt.asr.decoding import Hypothesis
from speechadapt.asr.streaming import AudioIn, EndpointConfig, VadTracker
from speechadapt.asr.whisper import SAMPLE_RATE, Prompt, WhisperModel, shift


LEAD_KEEP = SAMPLE_RATE // 2  # non-speech kept before an utterance's first speech (0.5 s)


def _words(text: str) -> list[str]:
    return text.split()


class WhisperStream(AudioIn):
    def __init__(self, model: WhisperModel, input_rate: int, endpoint: EndpointConfig = EndpointConfig()):
        self.model = model
        self.endpoint_config = endpoint
        self._init_input(input_rate, SAMPLE_RATE)
        self._vad_aggressiveness = endpoint.vad if endpoint.vad is not None else 2
        self._utt = np.zeros(0, np.float32)  # this utterance's audio
        self._start = 0  # samples (16 kHz) before this utterance
        self._decoded = 0  # utterance samples covered by the last decode
        self._vad = VadTracker(self._vad_aggressiveness, SAMPLE_RATE)
        self._last_words: list[str] = []
        self._committed: list[str] = []
        self._text = ""
        self.prompt: Prompt | None = None
        self.interim = True  # False: no interim decodes at all (finals only, at endpoints)
        step = model.decoding.interim_step_s
        self._step = int(step * SAMPLE_RATE)
        longest = min(endpoint.max_utterance_ms / 1000, model.decoding.max_utterance_s)
        self._longest = int(longest * SAMPLE_RATE)

    # -- input (accept_waveform, input_finished: AudioIn)
    def _push(self, samples: np.ndarray) -> None:
        if len(samples):
            self._vad.accept(samples)
            self._utt = np.concatenate([self._utt, samples.astype(np.float32)])
            if not self.heard_speech and len(self._utt) > LEAD_KEEP + self._step:
                drop = len(self._utt) - LEAD_KEEP  # leading non-speech: keep only the last LEAD_KEEP samples
                self._utt, self._start = self._utt[drop:], self._start + drop

    @property
    def heard_speech(self) -> bool:
        return self._vad.heard_speech or self.endpoint_config.vad is None

    # -- decoding
    def is_ready(self) -> bool:
        """Enough new audio for another interim decode (only once speech was heard, only when interim results
        are wanted, never after the input ended: the final decodes the utterance itself)."""
        if not self.interim or self.finished or not self.heard_speech or len(self._utt) == 0:
            return False
        new = len(self._utt) - self._decoded
        return new >= self._step or (self.finished and new > 0)

    def window(self) -> np.ndarray:
        return self._utt[: self._longest]

    def accept_hypothesis(self, hyp: Hypothesis, covered: int) -> None:
        """An interim decode of the first `covered` samples of the utterance: local agreement."""
        self._decoded = covered
        words = _words(hyp.text)
        agree = 0
        for a, b in zip(self._last_words, words):
            if a != b:
                break
            agree += 1
        if agree > len(self._committed):  # never take back what was committed
            self._committed = words[:agree]
        self._last_words = words
        self._text = " ".join(self._committed + words[len(self._committed):])

    def decode(self) -> None:
        while self.is_ready():
            WhisperStream.decode_batch([self])

    def decode_chunk(self) -> None:
        WhisperStream.decode_batch([self])

    @staticmethod
    def decode_batch(streams: list["WhisperStream"]) -> int:
        """One greedy decode of each ready stream; streams of the same model share one call."""
        groups: dict[int, list[WhisperStream]] = {}
        for s in streams:
            if s.is_ready():
                groups.setdefault(id(s.model), []).append(s)
        for members in groups.values():
            windows = [s.window() for s in members]
            hyps = members[0].model.generate(windows, [s.prompt for s in members], beam_size=1)
            for s, w, h in zip(members, windows, hyps):
                s.accept_hypothesis(h[0], len(w))
        return len(groups)

    # -- results
    def result(self) -> Hypothesis:
        """The utterance so far (committed words, then the newest decode's tentative ones)."""
        start = self._start / SAMPLE_RATE
        return Hypothesis(self._text, (), 0.0, start, start + self._decoded / SAMPLE_RATE)

    def stability(self) -> float:
        """Share of the interim text that is committed (will not change)."""
        committed = len(" ".join(self._committed))
        return min(1.0, committed / len(self._text)) if self._text else 0.0

    def final_result(self, nbest: int = 1, phrases: Prompt | None = None) -> list[Hypothesis]:
        """The utterance with beam search, word times and n-best; empty when no speech was heard."""
        start = self._start / SAMPLE_RATE
        end = start + len(self._utt) / SAMPLE_RATE
        if not self.heard_speech or len(self._utt) < SAMPLE_RATE // 10:
            return [Hypothesis("", (), 0.0, start, end)]
        prompt = phrases if phrases is not None else self.prompt
        hyps = self.model.generate([self.window()], [prompt], beam_size=self.model.decoding.beam_size,
                                   nbest=nbest, words=True)[0]
        return [shift(h, start) for h in hyps]

    # -- endpoints
    def is_endpoint(self) -> bool:
        """webrtcvad heard `stop_history_ms` of non-speech after speech; or the utterance fills the window
        (then always, even with endpointing disabled: Whisper reads at most 30 s)."""
        if len(self._utt) >= self._longest:
            return self.heard_speech
        cfg = self.endpoint_config
        return cfg.enabled and self._vad.heard_speech and self._vad.trailing_silence * 1000 >= cfg.stop_history_ms

    def is_idle(self) -> bool:
        """No speech for `idle_reset_ms`: the utterance window can move on."""
        return not self._vad.heard_speech and len(self._utt) * 1000 >= self.endpoint_config.idle_reset_ms * SAMPLE_RATE

    def reset(self) -> None:
        """Start a new utterance where the audio stands."""
        self._start += len(self._utt)
        self._utt = np.zeros(0, np.float32)
        self._decoded = 0
        self._vad = VadTracker(self._vad_aggressiveness, SAMPLE_RATE)
        self._last_words, self._committed, self._text = [], [], ""
