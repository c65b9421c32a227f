"""The acoustic model: a streaming-capable Conformer encoder with a CTC head.

Features are normalised with stored global statistics, stacked `stack` at a time
(10 ms -> 40 ms frames), projected, encoded by SpeechBrain's ConformerEncoder and
mapped to character logits. Trained with dynamic chunks, it runs chunk by chunk
with cached left context (`make_context` / `forward_chunk`), and `forward` with the
same chunk mask gives the same output on a whole utterance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.attention import RelPosEncXL
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

from speechadapt.asr.package import ARCHITECTURE  # noqa: F401 - the conformer-CTC package architecture


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 29
    n_mels: int = 80
    stack: int = 4  # fbank frames per encoder frame
    d_model: int = 144
    num_layers: int = 4
    nhead: int = 4
    d_ffn: int = 576
    kernel_size: int = 15
    dropout: float = 0.1
    chunk_frames: int = 8  # streaming chunk, encoder frames (8 x 40 ms = 320 ms)
    left_chunks: int = 4  # cached left context, in chunks

    @property
    def frame_seconds(self) -> float:
        return self.stack * 0.01

    def streaming(self) -> DynChunkTrainConfig:
        return DynChunkTrainConfig(self.chunk_frames, self.left_chunks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model hyperparameters: {sorted(unknown)}")
        return cls(**d)


class ConformerCTC(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("feat_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("feat_std", torch.ones(cfg.n_mels))
        self.proj = nn.Linear(cfg.n_mels * cfg.stack, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pos = RelPosEncXL(cfg.d_model)
        self.encoder = ConformerEncoder(
            num_layers=cfg.num_layers,
            d_model=cfg.d_model,
            d_ffn=cfg.d_ffn,
            nhead=cfg.nhead,
            kernel_size=cfg.kernel_size,
            dropout=cfg.dropout,
            causal=False,
            attention_type="RelPosMHAXL",
        )
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def _frontend(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) fbank -> (B, T // stack, d_model); a trailing partial stack is dropped."""
        b, t, m = feats.shape
        t = t - t % self.cfg.stack
        x = (feats[:, :t] - self.feat_mean) / self.feat_std
        return self.dropout(self.proj(x.reshape(b, t // self.cfg.stack, m * self.cfg.stack)))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, self.cfg.stack, rounding_mode="floor")

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, chunk: DynChunkTrainConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole utterances. feats (B, T, n_mels), lengths (B,) in fbank frames.
        Returns logits (B, T', vocab) and output lengths (B,). `chunk` None = full attention."""
        x = self._frontend(feats)
        out_len = self.output_lengths(lengths)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= out_len[:, None]
        mask = make_transformer_src_mask(x, dynchunktrain_config=chunk) if chunk is not None else None
        y, _ = self.encoder(x, src_mask=mask, src_key_padding_mask=pad, pos_embs=self.pos(x), dynchunktrain_config=chunk)
        return self.head(y), out_len

    def make_context(self, chunk: DynChunkTrainConfig | None = None):
        return self.encoder.make_streaming_context(chunk or self.cfg.streaming())

    def forward_chunk(self, feats: torch.Tensor, context) -> torch.Tensor:
        """One chunk (B, n * stack, n_mels) with the cached left context -> logits (B, n, vocab)."""
        x = self._frontend(feats)
        left = context.layers[0].mha_left_context
        total = x.shape[1] + (0 if left is None else left.shape[1])
        pos = self.pos.make_pe(total).to(x)
        y, _ = self.encoder.forward_streaming(x, context, pos_embs=pos)
        return self.head(y)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
