"""Train a model in this process (no Ray): the path tests and small experiments use."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from speechadapt.asr.beam import BeamDecoder
from speechadapt.asr.model import ConformerCTC
from speechadapt.asr.package import ModelCard, lexicon_from_texts, save_package
from speechadapt.asr.text import CharTokenizer
from speechadapt.training.loop import TrainConfig, Trainer, feature_stats, load_examples


def train_local(
    cfg: TrainConfig,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: int = 1,
    description: str = "",
    on_event=None,
) -> ModelCard:
    """Train from scratch and write the best checkpoint (by dev WER) as a model package in `out_dir`."""
    torch.manual_seed(cfg.seed)
    tokenizer = CharTokenizer()
    train = load_examples(train_manifest, tokenizer, cfg.features)
    dev = load_examples(dev_manifest, tokenizer, cfg.features)
    net = ConformerCTC(cfg.model)
    mean, std = feature_stats(train)
    net.feat_mean.copy_(mean)
    net.feat_std.copy_(std)
    t0 = time.monotonic()
    lexicon = lexicon_from_texts(e.text for e in train)  # shipped with the package: dev WER as served
    trainer = Trainer(cfg, net, tokenizer, train, dev, decoder=BeamDecoder(tokenizer, lexicon))
    best = trainer.run(on_event)
    return save_package(
        out_dir,
        net.eval(),
        tokenizer,
        cfg.features,
        name=name,
        version=version,
        description=description,
        metrics={"dev_wer": best},
        lexicon=lexicon,
        lineage={
            "strategy": "pretrain",
            "training_data": f"{train_manifest} ({len(train)} utterances)",
            "steps": trainer.step_no,
            "wall_seconds": round(time.monotonic() - t0, 1),
        },
    )
