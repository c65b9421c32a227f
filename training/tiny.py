"""A tiny closed-vocabulary model (digits and commands, two accents) for tests and the demo.

Trains in about two minutes on two cores: espeak-ng corpus -> `train_local` -> a model package.

    python -m speechadapt.training.tiny --out DIR   # writes DIR/corpus and DIR/store/tiny/1
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from speechadapt.asr.model import ModelConfig
from speechadapt.training.loop import TrainConfig

VOCAB = "zero one two three four five six seven eight nine yes no stop go left right up down on off".split()
VOICES = ("en-us", "en-gb")
VARIANTS = ("none", "m1", "f2", "m3", "f4")
MODEL = ModelConfig(d_model=96, num_layers=2, nhead=4, d_ffn=384)
TRAIN = TrainConfig(model=MODEL, max_steps=1000, eval_every=100, warmup_steps=50, batch_frames=3000, learning_rate=3e-3)


@dataclass(frozen=True)
class TinyAssets:
    store: Path  # a model store holding tiny@1
    train_manifest: Path
    dev_manifest: Path  # held-out sentences, same vocabulary and voices


def _sentences(path: Path, count: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(2, 5))) for _ in range(count)) + "\n")
    return path


def corpus(out: Path, name: str, count: int, seed: int) -> Path:
    """Synthesize `count` random command sentences; returns the manifest path."""
    from speechadapt.training.synth import SynthConfig, synthesize

    sentences = _sentences(out / f"{name}-sentences.txt", count, seed)
    synthesize(SynthConfig(out_dir=out / name, voices=list(VOICES), variants=list(VARIANTS), sentences_file=sentences,
                           count=count, seed=seed, quiet=True))
    return out / name / "manifest.jsonl"


def build(out: str | Path, steps: int | None = None, on_event=None) -> TinyAssets:
    from speechadapt.training.local import train_local

    out = Path(out)
    train = corpus(out / "corpus", "train", 240, seed=1)
    dev = corpus(out / "corpus", "dev", 20, seed=2)
    cfg = TRAIN if steps is None else TrainConfig(**{**TRAIN.__dict__, "max_steps": steps})
    store = out / "store"
    train_local(cfg, train, dev, store / "tiny" / "1", name="tiny",
                description="tiny test model: 20-word command vocabulary, en-us/en-gb espeak-ng voices", on_event=on_event)
    return TinyAssets(store, train, dev)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    assets = build(args.out, args.steps, on_event=lambda e: print(
        f"step {e['step']}/{e['total_steps']}  loss {e['loss']:.3f}  dev WER {e['dev_wer']:.1%}", flush=True))
    print(f"model store: {assets.store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
