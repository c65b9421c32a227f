"""A loaded model ready to recognise: whole utterances or streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from speechadapt.asr.audio import load_audio
from speechadapt.asr.beam import BeamDecoder, Phrase, model_beam_config, parse_phrases
from speechadapt.asr.decoding import Hypothesis, greedy_decode
from speechadapt.asr.features import FeatureConfig, fbank
from speechadapt.asr.model import ConformerCTC
from speechadapt.asr.package import ModelCard, load_package, read_card, read_lexicon, read_package_lm, verify
from speechadapt.asr.store import ModelRef, resolve_path_or_ref
from speechadapt.asr.text import CharTokenizer
from speechadapt.lm import LmFiles

WHISPER = "whisper"
WAV2VEC2 = "wav2vec2-ctc"


@dataclass
class AsrModel:
    card: ModelCard
    net: ConformerCTC
    tokenizer: CharTokenizer
    features: FeatureConfig
    ref: ModelRef | None = None
    lexicon: list[str] | None = None
    lm: LmFiles | None = None  # a word LM from the package's lm/ folder: finals decode with it
    beam: BeamDecoder = field(init=False, repr=False)

    def __post_init__(self):
        config = model_beam_config(self.card.decoding, self.lm)
        self.beam = BeamDecoder(self.tokenizer, self.lexicon, config, lm=self.lm)
        if self.lm is not None:
            self.beam.warm()  # seconds for a broad lexicon: at load, not at the first final

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @property
    def frame_seconds(self) -> float:
        return self.net.cfg.frame_seconds

    @property
    def name(self) -> str:
        return str(self.ref) if self.ref else f"{self.card.name}@{self.card.version}"

    @torch.inference_mode()
    def logits(self, samples: np.ndarray) -> torch.Tensor:
        """float32 mono at the model's rate -> (T', vocab), with the streaming chunk mask."""
        feats = fbank(samples, self.features)
        if feats.shape[0] < self.net.cfg.stack:
            return torch.zeros(0, len(self.tokenizer))
        out, _ = self.net(feats[None], torch.tensor([feats.shape[0]]), self.net.cfg.streaming())
        return out[0]

    def decode(self, logits: torch.Tensor, start_frame: int = 0, nbest: int = 1,
               phrases: tuple[Phrase, ...] = ()) -> list[Hypothesis]:
        """One utterance's logits (T, vocab) -> up to `nbest` hypotheses, best first.

        Beam search over the model's lexicon (and its word LM) when it has one; otherwise greedy, unless n-best
        lists or phrases ask for a (character-level) beam search."""
        if self.lexicon is None and self.lm is None and nbest <= 1 and not phrases:
            return [greedy_decode(logits, self.tokenizer, self.frame_seconds, start_frame)]
        return self.beam.decode(logits, self.frame_seconds, start_frame, nbest, phrases)

    def recognize(self, samples: np.ndarray, nbest: int = 1, phrases: tuple[Phrase, ...] = ()) -> list[Hypothesis]:
        return self.decode(self.logits(samples), 0, nbest, phrases)

    def transcribe(self, samples: np.ndarray) -> Hypothesis:
        return self.recognize(samples)[0]

    architecture = "conformer-ctc"

    def parse_phrases(self, contexts) -> tuple[Phrase, ...]:
        """speech_contexts -> phrases for the beam search. Raises ValueError naming every bad phrase."""
        return parse_phrases(contexts, self.tokenizer)

    def new_stream(self, input_rate: int, endpoint, phrases: tuple[Phrase, ...] = (), interim: bool = True):
        """A stream (interim results greedy; pass `phrases` to its `final_result`). Every chunk is decoded
        whether or not interim results are wanted: the endpointer reads the decoder's output."""
        from speechadapt.asr.streaming import Stream

        return Stream(self, input_rate, endpoint)

    def memory_bytes(self) -> int:
        """Memory the model holds: its parameters and buffers, and its word LM's search (an estimate)."""
        tensors = sum(t.numel() * t.element_size() for t in list(self.net.parameters()) + list(self.net.buffers()))
        return tensors + self.beam.memory_bytes()

    def transcribe_file(self, path: str | Path) -> Hypothesis:
        return self.transcribe(load_audio(path, self.sample_rate))


def load_model(ref: str | Path, store: str | Path | None = None, device: str = "cpu", threads: int = 0):
    """A package folder, or "name[@version]" from `store` or the built-in models.

    Every architecture gives an object with the same calls (`name`, `card`, `sample_rate`, `recognize`,
    `transcribe`, `transcribe_file`, `new_stream`, `parse_phrases`, `memory_bytes`): `AsrModel` for the
    conformer-CTC, `speechadapt.asr.whisper.WhisperModel` for Whisper, `speechadapt.asr.wav2vec2.Wav2Vec2Model`
    for wav2vec2 / HuBERT CTC."""
    mref = resolve_path_or_ref(str(ref), store)
    card = read_card(mref.path)
    if card.architecture == WHISPER:
        from speechadapt.asr.whisper import load_whisper

        verify(mref.path, card)
        return load_whisper(mref.path, card, mref, threads, store)
    if card.architecture == WAV2VEC2:
        from speechadapt.asr.wav2vec2 import load_wav2vec2

        verify(mref.path, card)
        return load_wav2vec2(mref.path, card, mref, device)
    card, net, tok, feats = load_package(mref.path, device=device)
    return AsrModel(card, net, tok, feats, mref, read_lexicon(mref.path, card), read_package_lm(mref.path, card))
