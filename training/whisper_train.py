"""Adapting a Whisper base model: the Ray Train worker loop of an adaptation job for encoder-decoder packages.

The job (training/adapt.py) is the same for every architecture: validate, baseline, Ray Train, evaluate with
the served model, gate, publish. What differs lives here:

- strategies: `head` trains the decoder only (the encoder frozen; its outputs are computed once per
  utterance and cached, so a step costs a decoder pass), `adapters` puts LoRA (peft) on the decoder's
  attention and feed-forward projections (the encoder frozen and cached as for `head`: a step through the
  encoder's 30 s window costs ~20x a decoder step on CPU, and LoRA on encoder and decoder was measured worse
  as well as slower, 66% vs 2% test WER on an FSDD speaker in the same budget), `finetune` trains everything
  with a small learning rate; default learning rates in `DEFAULT_LR`;
- the loss is the decoder's cross-entropy on the transcript (`<|startoftranscript|><|notimestamps|> text
  <|endoftext|>`), audio as Whisper's 30 s log-mel window;
- the dev WER during training is torch greedy decoding; the gate measures the exported package as served
  (CTranslate2), so the promoted numbers are the served ones;
- the adapted package is served with the window it was trained on (30 s: `min_window_s` in its card). Served
  with the base's shorter 15 s window, a decoder fine-tuned on 30 s windows was seen to loop in beam search.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LR = {"head": 2e-5, "finetune": 1e-5, "adapters": 5e-4}
# LoRA goes on these projections of every decoder layer (self- and cross-attention, feed-forward)
LORA_TARGETS = r"model\.decoder\.layers\.\d+\.((self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
FROZEN_ENCODER = ("head", "adapters")  # strategies whose encoder outputs are computed once and cached
MAX_LABEL_TOKENS = 440
SOURCE_CHECK_UTTERANCES = 30  # source dev utterances decoded at every evaluation (greedy, in torch)


@dataclass
class WhisperExample:
    feats: object  # (n_mels, 3000) float tensor, or None when only the encoder output is kept
    encoded: object  # (1500, d_model) cached encoder output (head strategy), else None
    labels: list[int]
    text: str


def prepare(net, strategy: str, lora_rank: int = 8):
    """Set what trains; returns (model to train, trained parameter count, total, lora rank or 0)."""
    total = sum(p.numel() for p in net.parameters())
    if strategy == "adapters":
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05,
                                             target_modules=LORA_TARGETS))
    else:
        for name, p in net.named_parameters():
            p.requires_grad = strategy == "finetune" or name.startswith("model.decoder.")
        net.model.decoder.embed_tokens.weight.requires_grad = strategy == "finetune"  # tied to the output layer
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return net, trained, total, lora_rank if strategy == "adapters" else 0


def merged(net):
    """The plain Whisper model with LoRA adapters folded in (the model itself when it has none)."""
    return net.merge_and_unload() if hasattr(net, "merge_and_unload") else net


def export_candidate(out_dir: Path, model, base_state: dict, base_dir: Path, base_card, base_ref: str, **card) -> dict:
    """Write the trained model as a package: an adapter package (only the LoRA factors, or only the tensors
    that changed) on top of `base_ref` when that is a stored model and the change is small, else complete.
    Returns the card's `base` ({} for a complete package)."""
    from speechadapt.asr.package import WEIGHTS
    from speechadapt.asr.whisper import (DELTA_SHARE, TOKENIZER, changed_tensors, lora_factors, save_whisper_package,
                                         state_for_package)

    factors, scaling = lora_factors(model)
    full = state_for_package(merged(model).eval())
    total = sum(v.numel() for v in full.values())
    delta = factors or changed_tensors(base_state, full)
    base = {}
    if base_ref and sum(v.numel() for v in delta.values()) <= DELTA_SHARE * total:
        base = {"model": base_ref, "weights_sha256": base_card.files[WEIGHTS]["sha256"], "lora_scaling": scaling}
    save_whisper_package(out_dir, delta if base else full, base_card.hparams, base_dir / TOKENIZER, name="candidate",
                         language=base_card.language, base=base, num_parameters=total, **card)
    return base


def label_ids(tokenizer, text: str, start: list[int], eot: int) -> list[int]:
    ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids[:MAX_LABEL_TOKENS]
    return start[1:] + ids + [eot]  # the decoder input is <|startoftranscript|> + these, shifted


def load_examples(manifest: str, mel, tokenizer, start, eot, encoder=None, lead_pad_s: float = 0.0) -> list[WhisperExample]:
    """A manifest's utterances as the served model sees them: `lead_pad_s` of silence first, a 30 s window."""
    import numpy as np
    import torch

    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.manifest import read_manifest
    from speechadapt.asr.whisper import SAMPLE_RATE, WINDOW_FRAMES

    out = []
    for u in read_manifest(manifest):
        x = load_audio(u.audio, SAMPLE_RATE)
        x = np.concatenate([np.zeros(int(lead_pad_s * SAMPLE_RATE), np.float32), x])
        feats = torch.from_numpy(mel(x, WINDOW_FRAMES))
        encoded = None
        if encoder is not None:
            with torch.inference_mode():
                encoded = encoder(feats[None]).last_hidden_state[0].clone()
            feats = None
        out.append(WhisperExample(feats, encoded, label_ids(tokenizer, u.text, start, eot), u.text))
    return out


def batch_tensors(batch: list[WhisperExample]):
    """(features or encoder states, labels padded with -100)."""
    import torch

    n = max(len(e.labels) for e in batch)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    if batch[0].encoded is not None:
        return torch.stack([e.encoded for e in batch]), labels
    return torch.stack([e.feats for e in batch]), labels


def greedy_texts(net, examples: list[WhisperExample], start: list[int], eot: int, tokenizer, max_new: int = 120) -> list[str]:
    """Greedy decoding, one utterance at a time (training's dev WER)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    texts = []
    with torch.inference_mode():
        for e in examples:
            if e.encoded is not None:
                enc = BaseModelOutput(last_hidden_state=e.encoded[None])
            else:
                enc = net.model.encoder(e.feats[None])
            ids = torch.tensor([start])
            past = None
            out: list[int] = []
            for _ in range(max_new):
                step = net(encoder_outputs=enc, decoder_input_ids=ids if past is None else ids[:, -1:],
                           past_key_values=past, use_cache=True)
                past = step.past_key_values
                tok = int(step.logits[0, -1].argmax())
                if tok >= eot:
                    break
                out.append(tok)
                ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
            texts.append(tokenizer.decode(out).strip())
    return texts


def worker_loop(config: dict) -> dict | None:
    """Ray Train worker for a Whisper base (see training/adapt.py `_worker_loop` for the CTC one)."""
    import shutil

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from tokenizers import Tokenizer

    from speechadapt.asr.evaluation import error_rates
    from speechadapt.asr.package import read_card
    from speechadapt.asr.whisper import (HOP, SAMPLE_RATE, TOKENIZER, WINDOW_FRAMES, LogMel, WhisperDecoding, build_torch,
                                         package_state)
    from speechadapt.training.adapt import CANDIDATE, LOG_EVERY, best_note, source_note, worker_say
    from speechadapt.training.pretrain import CHECKPOINT_FILE, _quiet_reports, rank_gather, report_checkpoint

    job = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))
    _quiet_reports(job.log_level)

    say = worker_say(job, rank)

    gather = rank_gather(world)

    t_load = time.monotonic()
    base = Path(job.base_path)
    card = read_card(base)
    torch.manual_seed(job.seed)
    base_state = package_state(base, card, job.store or None)
    net = build_torch(card.hparams, base_state)  # copies: base_state stays the base's
    tok = Tokenizer.from_file(str(base / TOKENIZER))
    eot, sot, nots = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")
    start = [sot, nots]
    mel = LogMel(card.hparams.get("num_mel_bins", 80))
    encoder = net.model.encoder if job.strategy in FROZEN_ENCODER else None
    lead = WhisperDecoding.from_dict(card.decoding).lead_pad_s
    load = lambda m: load_examples(m, mel, tok, start, eot, encoder, lead)  # noqa: E731
    train, dev = load(job.train_manifest), load(job.dev_manifest)
    replay = load(job.replay_manifest) if job.replay_manifest else []
    source_dev = load(job.source_dev_manifest)[:SOURCE_CHECK_UTTERANCES] if job.source_dev_manifest else []
    model, trained, total_params, lora_rank = prepare(net, job.strategy)
    model.train()
    ddp = ray.train.torch.prepare_model(model) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0)
    schedule = job.schedule()
    total, warmup, eval_every = schedule["total_steps"], schedule["warmup_steps"], schedule["eval_every"]
    per_batch = max(1, job.batch_size - (round(job.batch_size * job.source_replay) if replay else 0))
    n_replay = job.batch_size - per_batch if replay else 0
    say(total_steps=total, message=f"{world} workers: {len(train)} target utterances, {len(dev)} dev, {len(replay)} replay; "
        f"whisper {job.strategy}: {trained:,} of {total_params:,} parameters trained"
        f"{f' (LoRA rank {lora_rank})' if lora_rank else ''}; loaded in {time.monotonic() - t_load:.1f} s")

    def corpus_wer(examples: list[WhisperExample]) -> float:
        """Greedy corpus WER, the examples shared out over the ranks."""
        model.eval()
        net_ = model.get_base_model() if hasattr(model, "get_base_model") else model
        shard = examples[rank::world]
        pairs = [p for part in gather(list(zip([e.text for e in shard], greedy_texts(net_, shard, start, eot, tok))))
                 for p in part]
        model.train()
        return error_rates([r for r, _ in pairs], [h for _, h in pairs])[0]

    # The source check compares like with like: this loop's greedy WER of the base itself, plus the gate's margin.
    source_limit = corpus_wer(source_dev) + job.max_source_regression if source_dev else float("inf")
    if source_dev:
        say(total_steps=total, message=f"source check: {len(source_dev)} source dev utterances, base greedy WER "
            f"{source_limit - job.max_source_regression:.1%}; checkpoints above {source_limit:.1%} are not kept")

    def trainable_state() -> dict:
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    step, best_wer, best_state, best_step, history = 0, float("inf"), None, 0, []
    meta = {"restarts": 0, "resumed_from_steps": [], "train_seconds": 0.0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["trainable"], strict=False)
        opt.load_state_dict(saved["optimizer"])
        step, best_wer, best_step, history = saved["step"], saved["best_wer"], saved["best_step"], saved["history"]
        best_state = saved["best"]
        meta = saved["meta"]
        meta["restarts"] += 1
        meta["resumed_from_steps"].append(step)
        say(step=step, total_steps=total, dev_wer=best_wer, message=f"resumed from the checkpoint at step {step}")

    rng = random.Random(job.seed * 1000 + rank + 7919 * step)
    t_attempt, seconds_before, losses = time.monotonic(), meta["train_seconds"], []
    while step < total:
        lr = job.lr * min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total)))))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = rng.sample(train, min(per_batch, len(train))) + (rng.sample(replay, min(n_replay, len(replay))) if n_replay else [])
        inputs, labels = batch_tensors(batch)
        if job.strategy in FROZEN_ENCODER:
            from transformers.modeling_outputs import BaseModelOutput

            out = ddp(encoder_outputs=BaseModelOutput(last_hidden_state=inputs), labels=labels)
        else:
            out = ddp(input_features=inputs, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(out.loss))
        step += 1
        evaluate = step % eval_every == 0 or step == total
        if step % LOG_EVERY and not evaluate:
            continue
        train_seconds = seconds_before + time.monotonic() - t_attempt
        flags = torch.tensor([sum(losses), len(losses), float(train_seconds > job.max_minutes * 60)])
        if distributed:
            dist.all_reduce(flags)
        loss = float(flags[0] / max(1.0, float(flags[1])))
        out_of_time = bool(flags[2] > 0)
        losses.clear()
        history.append({"event": "train", "step": step, "loss": round(loss, 4), "lr": lr})
        if not (evaluate or out_of_time):
            say(step=step, total_steps=total, loss=loss, message=f"lr {lr:.2g}")
            continue
        wer = corpus_wer(dev)
        src = corpus_wer(source_dev) if source_dev else None
        within = src is None or src <= source_limit + 1e-9
        if within and wer < best_wer:
            best_wer, best_step, best_state = wer, step, trainable_state()
        meta["train_seconds"] = train_seconds
        history.append({"event": "eval", "step": step, "loss": round(loss, 4), "dev_wer": wer, "best_dev_wer": best_wer,
                        "elapsed_s": round(train_seconds, 1), **({"source_dev_wer": src} if src is not None else {})})
        say(step=step, total_steps=total, loss=loss, dev_wer=wer,
            message=f"target dev WER {wer:.1%} (greedy){source_note(src, source_limit)}{best_note(best_wer, best_step)}")
        metrics = {"step": step, "loss": loss, "dev_wer": wer, "best_dev_wer": best_wer}
        report_checkpoint(rank, metrics, step, {
            "trainable": trainable_state(), "optimizer": opt.state_dict(), "step": step, "best_wer": best_wer,
            "best_step": best_step, "best": best_state, "history": history, "meta": meta})
        if out_of_time:
            say(step=step, total_steps=total, message=f"time budget of {job.max_minutes:g} min used up at step {step}")
            break

    if rank != 0:
        return None
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    out_dir = Path(job.run_dir) / CANDIDATE
    shutil.rmtree(out_dir, ignore_errors=True)
    export_candidate(out_dir, model, base_state, base, card, job.base_ref, metrics={"dev_wer": best_wer},
                     decoding={**card.decoding, "min_window_s": WINDOW_FRAMES * HOP / SAMPLE_RATE})
    return {"steps": step, "total_steps": total, "best_step": best_step, "best_dev_wer": best_wer,
            "train_seconds": round(meta["train_seconds"], 1), "restarts": meta["restarts"],
            "resumed_from_steps": meta["resumed_from_steps"], "workers": world, "trained_parameters": trained,
            "total_parameters": total_params, "lora_rank": lora_rank, "train_examples": len(train),
            "replay_examples": len(replay), "schedule": schedule, "history": history}
