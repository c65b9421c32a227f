"""CTC decoding: greedy, incremental across chunks, with word times and confidences."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from speechadapt.asr.text import CharTokenizer


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float
    confidence: float


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: tuple[Word, ...] = ()
    confidence: float = 0.0
    start: float = 0.0  # utterance span, seconds
    end: float = 0.0


@dataclass
class GreedyCTC:
    """Greedy CTC over frames that arrive chunk by chunk; frame times are absolute.

    Keeps, for each emitted token, its frame and posterior; collapses repeats across
    chunk boundaries; keeps the utterance's logits for a final beam search (`utterance_logits`).
    `reset(frame)` starts a new utterance at an absolute frame.
    """

    tokenizer: CharTokenizer
    frame_seconds: float
    start_frame: int = 0
    frames: int = 0  # frames decoded in this utterance
    tokens: list[tuple[int, int, float]] = field(default_factory=list)  # (token, abs frame, prob)
    last_token: int = 0
    last_emit_frame: int = -1  # absolute frame of the last non-blank, -1 if none
    chunks: list[torch.Tensor] = field(default_factory=list)  # this utterance's logits

    def update(self, logits: torch.Tensor) -> None:
        """logits (T, vocab) for the next T frames."""
        self.chunks.append(logits)
        probs = logits.float().softmax(-1)
        p, ids = probs.max(-1)
        base = self.start_frame + self.frames
        for t, (tok, pr) in enumerate(zip(ids.tolist(), p.tolist())):
            if tok != self.tokenizer.blank:
                self.last_emit_frame = base + t
                if tok != self.last_token:
                    self.tokens.append((tok, base + t, pr))
            self.last_token = tok
        self.frames += len(ids)

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frames

    def trailing_blank_seconds(self) -> float:
        """Time since the last emitted token (or since the utterance started, when none)."""
        last = self.last_emit_frame if self.last_emit_frame >= 0 else self.start_frame - 1
        return (self.end_frame - 1 - last) * self.frame_seconds

    def utterance_logits(self) -> torch.Tensor:
        if not self.chunks:
            return torch.zeros(0, len(self.tokenizer))
        if len(self.chunks) > 1:
            self.chunks = [torch.cat(self.chunks)]
        return self.chunks[0]

    @property
    def has_speech(self) -> bool:
        return any(t != self.tokenizer.space for t, _, _ in self.tokens)

    def reset(self, frame: int | None = None) -> None:
        self.start_frame = self.end_frame if frame is None else frame
        self.frames = 0
        self.tokens = []
        self.chunks = []
        self.last_token = self.tokenizer.blank
        self.last_emit_frame = -1

    def hypothesis(self) -> Hypothesis:
        words: list[Word] = []
        current: list[tuple[int, int, float]] = []

        def close():
            if current:
                text = self.tokenizer.decode(t for t, _, _ in current)
                conf = sum(p for _, _, p in current) / len(current)
                words.append(
                    Word(text, current[0][1] * self.frame_seconds, (current[-1][1] + 1) * self.frame_seconds, conf)
                )
                current.clear()

        for item in self.tokens:
            if item[0] == self.tokenizer.space:
                close()
            else:
                current.append(item)
        close()
        text = " ".join(w.word for w in words)
        conf = sum(w.confidence for w in words) / len(words) if words else 0.0
        return Hypothesis(
            text, tuple(words), conf, self.start_frame * self.frame_seconds, self.end_frame * self.frame_seconds
        )


def greedy_decode(logits: torch.Tensor, tokenizer: CharTokenizer, frame_seconds: float, start_frame: int = 0) -> Hypothesis:
    """Whole-utterance greedy CTC: logits (T, vocab); times count from `start_frame`."""
    dec = GreedyCTC(tokenizer, frame_seconds, start_frame)
    dec.update(logits)
    return dec.hypothesis()
