"""Log-mel filterbank features (Kaldi-compatible fbank), whole-utterance or streaming."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0

    @property
    def window(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    def to_dict(self) -> dict:
        return {"type": "fbank", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        if d.get("type", "fbank") != "fbank":
            raise ValueError(f"unsupported feature type {d.get('type')!r}; only 'fbank'")
        return cls(**{k: d[k] for k in ("sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms") if k in d})


def fbank(samples: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """float32 samples in [-1, 1) -> (frames, n_mels). Frames are independent (snip_edges)."""
    x = torch.as_tensor(samples, dtype=torch.float32)
    if x.numel() < cfg.window:
        return torch.zeros(0, cfg.n_mels)
    return kaldi.fbank(
        x.unsqueeze(0) * 32768.0,
        num_mel_bins=cfg.n_mels,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        sample_frequency=cfg.sample_rate,
        dither=0.0,
        energy_floor=0.0,
        snip_edges=True,
    )


class StreamingFbank:
    """Fbank over audio that arrives in pieces; yields exactly the frames `fbank` gives on the whole."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self._buf = np.zeros(0, dtype=np.float32)

    def accept(self, samples: np.ndarray) -> torch.Tensor:
        self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
        if len(self._buf) < self.cfg.window:
            return torch.zeros(0, self.cfg.n_mels)
        n = 1 + (len(self._buf) - self.cfg.window) // self.cfg.shift
        feats = fbank(self._buf[: (n - 1) * self.cfg.shift + self.cfg.window], self.cfg)
        self._buf = self._buf[n * self.cfg.shift :]
        return feats

    def reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
