#!/usr/bin/env python
"""Seconds per optimiser step of the Whisper adaptation strategies, as the job's worker loop takes them
(training/whisper_train.py: batch 16, 12 target + 4 replay utterances; head/adapters on cached encoder outputs,
finetune through the encoder's 30 s window), one torch thread, random audio of 3 s and 12-word transcripts.

    python bench/whisper_step_time.py [--steps 4] [--strategies head,adapters,finetune] [--threads 1]

The sizes of bench/transfer_curve.py's Whisper budgets (STEP_SECONDS_WHISPER) come from this.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed steps per strategy, after one warm-up step")
    p.add_argument("--strategies", default="head,adapters,finetune")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from transformers.modeling_outputs import BaseModelOutput

    from speechadapt.asr.importers import DEFAULT_WHISPER, ensure_default_whisper
    from speechadapt.asr.inference import load_model
    from speechadapt.asr.whisper import TOKENIZER, WINDOW_FRAMES, LogMel, build_torch, package_state
    from speechadapt.training.whisper_train import FROZEN_ENCODER, WhisperExample, batch_tensors, label_ids, prepare

    torch.set_num_threads(args.threads)
    ensure_default_whisper()
    ref = load_model(DEFAULT_WHISPER).ref
    from speechadapt.asr.package import read_card

    card = read_card(ref.path)
    state = package_state(ref.path, card)
    tok = Tokenizer.from_file(str(ref.path / TOKENIZER))
    start = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    eot = tok.token_to_id("<|endoftext|>")
    mel = LogMel(card.hparams.get("num_mel_bins", 80))
    rng = np.random.default_rng(0)
    text = "the quick brown fox jumps over the lazy dog while we are waiting here"
    out = {}
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        torch.manual_seed(0)
        net = build_torch(card.hparams, state)
        frozen = strategy in FROZEN_ENCODER
        examples = []
        t0 = time.monotonic()
        for _ in range(args.batch):
            feats = torch.from_numpy(mel((0.05 * rng.standard_normal(48000)).astype(np.float32), WINDOW_FRAMES))
            enc = None
            if frozen:
                with torch.inference_mode():
                    enc = net.model.encoder(feats[None]).last_hidden_state[0].clone()
                feats = None
            examples.append(WhisperExample(feats, enc, label_ids(tok, text, start, eot), text))
        cache_s = (time.monotonic() - t0) / args.batch if frozen else 0.0
        model, trained, total, _ = prepare(net, strategy)
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        times = []
        for i in range(args.steps + 1):
            t0 = time.monotonic()
            inputs, labels = batch_tensors(examples)
            o = model(encoder_outputs=BaseModelOutput(last_hidden_state=inputs), labels=labels) if frozen \
                else model(input_features=inputs, labels=labels)
            opt.zero_grad(set_to_none=True)
            o.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if i:
                times.append(time.monotonic() - t0)
        out[strategy] = {"step_seconds": round(float(np.median(times)), 3), "steps": args.steps,
                         "encoder_cache_seconds_per_utterance": round(cache_s, 3), "trained_parameters": trained}
        print(json.dumps({strategy: out[strategy]}), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
