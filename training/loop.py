"""The CTC training loop shared by pretraining, adaptation and tests.

One `TrainConfig` decides the modules and schedule; `Trainer` holds the model,
optimiser and data, steps it, evaluates on a dev set and keeps the best state by
dev WER (the SpeechBrain-recipe pattern). Distributed wrappers (Ray Train) drive
the same `Trainer.step`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

from speechadapt.asr.audio import load_audio
from speechadapt.asr.beam import BeamDecoder
from speechadapt.asr.decoding import greedy_decode
from speechadapt.asr.evaluation import error_rates
from speechadapt.asr.features import FeatureConfig, fbank
from speechadapt.asr.manifest import read_manifest
from speechadapt.asr.model import ConformerCTC, ModelConfig
from speechadapt.asr.text import CharTokenizer, normalize_text


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0 = no time budget
    batch_frames: int = 12000  # fbank frames per batch (x 10 ms)
    batch_utterances: int = 0  # > 0: batches of this many utterances (random, not length-bucketed) instead
    replay_share: float = 0.0  # share of each batch drawn from `Trainer(replay=...)` examples (0 <= share < 1)
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    grad_clip: float = 5.0
    eval_every: int = 100
    # SpecAugment
    time_masks: int = 2
    time_mask_frames: int = 30
    freq_masks: int = 2
    freq_mask_bins: int = 12
    # Dynamic chunk training: chunk sizes (encoder frames) and left context (chunks); some batches full context.
    chunk_min: int = 4
    chunk_max: int = 16
    left_chunks_choices: tuple = (1, 2, 4, 8)
    full_context_prob: float = 0.25
    seed: int = 0


@dataclass
class Example:
    feats: torch.Tensor  # (T, n_mels)
    targets: list[int]
    text: str


def load_examples(manifest: str | Path, tokenizer: CharTokenizer, features: FeatureConfig) -> list[Example]:
    out = []
    for u in read_manifest(manifest):
        text = normalize_text(u.text)
        out.append(Example(fbank(load_audio(u.audio, features.sample_rate), features), tokenizer.encode(text), text))
    return out


def feature_stats(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    allf = torch.cat([e.feats for e in examples])
    return allf.mean(0), allf.std(0).clamp_min(1e-3)


def make_batches(examples: list[Example], batch_frames: int, rng: random.Random, batch_utterances: int = 0) -> list[list[Example]]:
    """Length-bucketed batches of about `batch_frames` padded frames, in random order; with `batch_utterances`
    > 0 instead a shuffled epoch cut into batches of that many utterances (the last one may be smaller)."""
    if batch_utterances > 0:
        order = list(examples)
        rng.shuffle(order)
        return [order[i : i + batch_utterances] for i in range(0, len(order), batch_utterances)]
    order = sorted(examples, key=lambda e: e.feats.shape[0] + rng.random())
    batches, cur = [], []
    for e in order:
        if cur and (len(cur) + 1) * e.feats.shape[0] > batch_frames:
            batches.append(cur)
            cur = []
        cur.append(e)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([e.feats.shape[0] for e in batch])
    feats = torch.zeros(len(batch), int(lengths.max()), batch[0].feats.shape[1])
    for i, e in enumerate(batch):
        feats[i, : e.feats.shape[0]] = e.feats
    targets = torch.tensor([t for e in batch for t in e.targets], dtype=torch.long)
    target_lengths = torch.tensor([len(e.targets) for e in batch])
    return feats, lengths, targets, target_lengths


def shard_batches(batches: list[list[Example]], rank: int, world_size: int) -> list[list[Example]]:
    """This rank's share of one epoch's batches: every rank gets the same number (a remainder is dropped;
    fewer batches than ranks are repeated), so ranks that share an RNG stay in lockstep."""
    if world_size <= 1:
        return batches
    if len(batches) < world_size:
        batches = (batches * world_size)[:world_size]
    n = len(batches) - len(batches) % world_size
    return batches[:n][rank::world_size]


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, fill: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    feats = feats.clone()
    for i, n in enumerate(lengths.tolist()):
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, cfg.time_mask_frames + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, n - w), (1,), generator=gen))
            feats[i, s : s + w] = fill
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_mask_bins + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, feats.shape[2] - w), (1,), generator=gen))
            feats[i, :, s : s + w] = fill[s : s + w]
    return feats


def sample_chunk(cfg: TrainConfig, rng: random.Random) -> DynChunkTrainConfig | None:
    if rng.random() < cfg.full_context_prob:
        return None
    return DynChunkTrainConfig(rng.randint(cfg.chunk_min, cfg.chunk_max), rng.choice(cfg.left_chunks_choices))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to 5% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.inference_mode()
def transcribe_examples(net: ConformerCTC, examples: list[Example], tokenizer: CharTokenizer,
                        decoder: BeamDecoder | None = None) -> list[str]:
    """Hypotheses with the streaming chunk mask, on the model's device: greedy, or `decoder`'s beam search
    (the serving decoder of a model with a lexicon)."""
    was = net.training
    net.eval()
    device = net.feat_mean.device
    hyps = []
    for e in examples:
        logits, _ = net(e.feats[None].to(device), torch.tensor([e.feats.shape[0]], device=device), net.cfg.streaming())
        logits = logits[0].cpu()
        best = decoder.decode(logits, net.cfg.frame_seconds)[0] if decoder is not None else \
            greedy_decode(logits, tokenizer, net.cfg.frame_seconds)
        hyps.append(best.text)
    net.train(was)
    return hyps


class Trainer:
    """`net` is the bare model (evaluated, saved); `model` what the training forward calls, e.g. DDP(net)
    (default: `net`). With `world_size` > 1 each rank takes `shard_batches` of every epoch's batches; give
    every rank the same seed so their batch lists agree.

    `param_groups`: optimiser groups (`{"params": [...], "lr_scale": s, ...}`; each group's LR is the schedule's
    times its `lr_scale`); default: every parameter with `requires_grad`. `replay`: examples of which
    `cfg.replay_share` of each batch is made (drawn per step and rank, independent of the epoch order, so a
    resumed run draws the same ones); the train set fills the rest.

    `decoder`: how dev hypotheses are decoded (default greedy); give the model's serving decoder (beam search
    over its lexicon) so that the best checkpoint is the best as served. `source_dev` and `source_limit`: the
    best checkpoint is then the lowest dev WER among the evaluations whose WER on `source_dev` is at most
    `source_limit` (an adaptation job's forgetting gate, applied to every checkpoint: early stopping on the
    source domain); `last_source_wer` holds the latest. `gather(obj) -> [obj of every rank]`
    (e.g. `torch.distributed.all_gather_object`): with it, each rank decodes dev[rank::world_size] and all
    ranks get the same corpus WER; without it every rank decodes the whole dev set."""

    def __init__(self, cfg: TrainConfig, net: ConformerCTC, tokenizer: CharTokenizer, train: list[Example], dev: list[Example],
                 *, model: torch.nn.Module | None = None, rank: int = 0, world_size: int = 1,
                 param_groups: list[dict] | None = None, replay: list[Example] | None = None,
                 decoder: BeamDecoder | None = None, gather: Callable[[object], list] | None = None,
                 source_dev: list[Example] | None = None, source_limit: float = float("inf")):
        self.cfg, self.net, self.tokenizer, self.train_set, self.dev_set = cfg, net, tokenizer, train, dev
        self.source_dev, self.source_limit = list(source_dev or []), source_limit
        self.last_source_wer: float | None = None
        self.decoder, self.gather = decoder, gather
        self.last_cer = float("nan")
        self.model = net if model is None else model
        self.rank, self.world_size = rank, world_size
        self.rng = random.Random(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.replay = list(replay or []) if cfg.replay_share > 0 else []
        if param_groups is None:
            param_groups = [{"params": [p for p in net.parameters() if p.requires_grad]}]
        self.opt = torch.optim.AdamW(param_groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.step_no = 0
        self.best_wer = float("inf")
        self.best_state: dict | None = None
        self.history: list[dict] = []
        self._epoch: list[list[Example]] = []  # this epoch's batches, all ranks' (before sharding)
        self._batches: list[list[Example]] = []  # this rank's batches not yet taken

    def next_batch(self) -> list[Example]:
        if not self._batches:
            share = self.cfg.replay_share if self.replay else 0.0
            per_batch = self.cfg.batch_utterances
            if per_batch > 0 and share > 0:  # the train set's part of each batch
                per_batch = max(1, per_batch - self._replay_count(per_batch))
            self._epoch = make_batches(self.train_set, max(1, int(self.cfg.batch_frames * (1 - share))), self.rng, per_batch)
            self._batches = shard_batches(self._epoch, self.rank, self.world_size)
        batch = self._batches.pop()
        if self.replay:
            n = self._replay_count(self.cfg.batch_utterances) if self.cfg.batch_utterances > 0 else \
                max(1, round(len(batch) * self.cfg.replay_share / (1 - self.cfg.replay_share)))
            draw = random.Random((self.cfg.seed * 1_000_003 + self.step_no) * 1_009 + self.rank)
            batch = batch + [self.replay[draw.randrange(len(self.replay))] for _ in range(n)]
        return batch

    def _replay_count(self, batch_utterances: int) -> int:
        """Replay utterances in a batch of `batch_utterances`: at least 1, at most all but one."""
        return min(max(1, round(batch_utterances * self.cfg.replay_share)), max(1, batch_utterances - 1))

    def step(self) -> float:
        """One optimiser step; returns the CTC loss."""
        self.model.train()
        feats, lengths, targets, target_lengths = collate(self.next_batch())
        feats = spec_augment(feats, lengths, self.net.feat_mean.detach().cpu(), self.cfg, self.gen)
        device = self.net.feat_mean.device
        feats, lengths, targets, target_lengths = (t.to(device) for t in (feats, lengths, targets, target_lengths))
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step_no, self.cfg) * g.get("lr_scale", 1.0)
        logits, out_len = self.model(feats, lengths, sample_chunk(self.cfg, self.rng))
        loss = F.ctc_loss(
            logits.log_softmax(-1).transpose(0, 1), targets, out_len, target_lengths,
            blank=self.tokenizer.blank, zero_infinity=True,
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step_no += 1
        return float(loss.detach())

    def _error_rates(self, examples: list[Example]) -> tuple[float, float]:
        """Corpus (WER, CER) on `examples`, shared out over the ranks with `gather`."""
        refs = [e.text for e in examples]
        if self.gather is None or self.world_size == 1:
            hyps = transcribe_examples(self.net, examples, self.tokenizer, self.decoder)
        else:
            mine = list(range(self.rank, len(examples), self.world_size))
            part = transcribe_examples(self.net, [examples[i] for i in mine], self.tokenizer, self.decoder)
            by_index = dict(pair for got in self.gather(list(zip(mine, part))) for pair in got)
            hyps = [by_index[i] for i in range(len(examples))]
        return error_rates(refs, hyps)

    def dev_wer(self) -> float:
        """Corpus WER on the dev set (its CER goes to `last_cer`)."""
        wer, self.last_cer = self._error_rates(self.dev_set)
        return wer

    def evaluate(self) -> float:
        wer = self.dev_wer()
        if self.source_dev:
            self.last_source_wer = self._error_rates(self.source_dev)[0]
            if self.last_source_wer > self.source_limit + 1e-9:
                return wer  # forgets too much: not a candidate, whatever its dev WER
        if wer < self.best_wer:
            self.best_wer = wer
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return wer

    def run(self, on_event: Callable[[dict], None] | None = None) -> float:
        """Train to the step or time budget, evaluating every `eval_every` steps; load the best state. Returns best dev WER."""
        t0 = time.monotonic()
        losses: list[float] = []
        while self.step_no < self.cfg.max_steps:
            losses.append(self.step())
            out_of_time = self.cfg.max_minutes and time.monotonic() - t0 > self.cfg.max_minutes * 60
            if self.step_no % self.cfg.eval_every == 0 or self.step_no == self.cfg.max_steps or out_of_time:
                wer = self.evaluate()
                event = {"step": self.step_no, "total_steps": self.cfg.max_steps, "loss": sum(losses) / len(losses),
                         "dev_wer": wer, "elapsed_s": time.monotonic() - t0}
                self.history.append(event)
                losses.clear()
                if on_event:
                    on_event(event)
            if out_of_time:
                break
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        return self.best_wer

    def state_dict(self) -> dict:
        """Everything needed to continue where this left off (tensors, numbers, lists: `torch.load(weights_only=True)`
        reads it back). Per-process RNGs (the SpecAugment generator, torch's global RNG) are the caller's to keep."""
        index = {id(e): i for i, e in enumerate(self.train_set)}
        return {
            "step": self.step_no,
            "net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "opt": self.opt.state_dict(),
            "best_wer": self.best_wer,
            "best_state": None if self.best_state is None else {k: v.detach().cpu() for k, v in self.best_state.items()},
            "history": [dict(h) for h in self.history],
            "rng": self.rng.getstate(),
            "epoch": [[index[id(e)] for e in b] for b in self._epoch],
            "taken": len(shard_batches(self._epoch, self.rank, self.world_size)) - len(self._batches) if self._epoch else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output (same train set, same world size for the batch position)."""
        device = self.net.feat_mean.device
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.step_no = int(state["step"])
        self.best_wer = float(state["best_wer"])
        self.best_state = None if state["best_state"] is None else {k: v.to(device) for k, v in state["best_state"].items()}
        self.history = [dict(h) for h in state["history"]]
        self.rng.setstate(state["rng"])
        self._epoch = [[self.train_set[i] for i in b] for b in state["epoch"]]
        shard = shard_batches(self._epoch, self.rank, self.world_size)
        self._batches = shard[: max(0, len(shard) - int(state["taken"]))]
