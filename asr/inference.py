"""A loaded model ready to recognise: whole utterances or streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from speechadapt.asr.audio import load_audio
from speechadapt.asr.beam import BeamConfig, BeamDecoder, Phrase
from speechadapt.asr.decoding import Hypothesis, greedy_decode
from speechadapt.asr.features import FeatureConfig, fbank
from speechadapt.asr.model import ConformerCTC
from speechadapt.asr.package import ModelCard, load_package, read_lexicon
from speechadapt.asr.store import ModelRef, resolve_path_or_ref
from speechadapt.asr.text import CharTokenizer


@dataclass
class AsrModel:
    card: ModelCard
    net: ConformerCTC
    tokenizer: CharTokenizer
    features: FeatureConfig
    ref: ModelRef | None = None
    lexicon: list[str] | None = None
    beam: BeamDecoder = field(init=False, repr=False)

    def __post_init__(self):
        self.beam = BeamDecoder(self.tokenizer, self.lexicon, BeamConfig.from_dict(self.card.decoding))

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

        Beam search over the model's lexicon when it has one; otherwise greedy, unless n-best lists or
        phrases ask for a (character-level) beam search."""
        if self.lexicon is None and nbest <= 1 and not phrases:
            return [greedy_decode(logits, self.tokenizer, self.frame_seconds, start_frame)]
        return self.beam.decode(logits, self.frame_seconds, start_frame, nbest, phrases)

    def recognize(self, samples: np.ndarray, nbest: int = 1, phrases: tuple[Phrase, ...] = ()) -> list[Hypothesis]:
        return self.decode(self.logits(samples), 0, nbest, phrases)

    def transcribe(self, samples: np.ndarray) -> Hypothesis:
        return self.recognize(samples)[0]

    def transcribe_file(self, path: str | Path) -> Hypothesis:
        return self.transcribe(load_audio(path, self.sample_rate))


def load_model(ref: str | Path, store: str | Path | None = None, device: str = "cpu") -> AsrModel:
    """A package folder, or "name[@version]" from `store` or the built-in models."""
    mref = resolve_path_or_ref(str(ref), store)
    card, net, tok, feats = load_package(mref.path, device=device)
    return AsrModel(card, net, tok, feats, mref, read_lexicon(mref.path, card))
