"""A loaded model ready to recognise: whole utterances or streams."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechadapt.asr.audio import load_audio
from speechadapt.asr.decoding import Hypothesis, greedy_decode
from speechadapt.asr.features import FeatureConfig, fbank
from speechadapt.asr.model import ConformerCTC
from speechadapt.asr.package import ModelCard, load_package
from speechadapt.asr.store import ModelRef, resolve_path_or_ref
from speechadapt.asr.text import CharTokenizer


@dataclass
class AsrModel:
    card: ModelCard
    net: ConformerCTC
    tokenizer: CharTokenizer
    features: FeatureConfig
    ref: ModelRef | None = None

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

    def transcribe(self, samples: np.ndarray) -> Hypothesis:
        return greedy_decode(self.logits(samples), self.tokenizer, self.frame_seconds)

    def transcribe_file(self, path: str | Path) -> Hypothesis:
        return self.transcribe(load_audio(path, self.sample_rate))


def load_model(ref: str | Path, store: str | Path | None = None, device: str = "cpu") -> AsrModel:
    """A package folder, or "name[@version]" from `store` or the built-in models."""
    mref = resolve_path_or_ref(str(ref), store)
    card, net, tok, feats = load_package(mref.path, device=device)
    return AsrModel(card, net, tok, feats, mref)
