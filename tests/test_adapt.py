"""Adaptation jobs, training side: strategies (head, layer-wise-decayed finetune, LoRA adapters merged at export),
data checks, the promotion gate and atomic publishing, and real `python -m speechadapt.training.adapt` runs
(local Ray on 127.0.0.1, 2 DDP workers) that adapt the tiny model to a Scottish-accent set synthesized here."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TARGET_VOICE = "en-gb-x-gbcwmd"  # West Midlands; tiny@1 knows en-us and en-gb: about 45% WER on this accent


# ---------------------------------------------------------------------------------------------------------
# Strategies (randomly initialised tiny-sized model, no data)


def _net(seed=0):
    import torch

    from speechadapt.asr.model import ConformerCTC
    from speechadapt.training.tiny import MODEL

    torch.manual_seed(seed)
    return ConformerCTC(MODEL).eval()


def _copy(net):
    import copy

    return copy.deepcopy(net)


def _toy(n: int, seed: int = 0) -> list:
    """`n` random feature sequences with short command transcripts."""
    import torch

    from speechadapt.asr.text import CharTokenizer
    from speechadapt.training.loop import Example

    rng, tok, words = random.Random(seed), CharTokenizer(), ["go", "stop", "left", "up"]
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        feats = torch.randn(rng.randint(60, 160), 80, generator=torch.Generator().manual_seed(rng.randint(0, 10**6)))
        out.append(Example(feats, tok.encode(text), text))
    return out


def _inputs():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 160, 80, generator=g), torch.tensor([160, 121])


def _out(net):
    import torch

    with torch.no_grad():
        return net(*_inputs())[0]


def test_head_trains_only_the_output_layer():
    from speechadapt.training.strategies import prepare

    net = _net()
    plan = prepare(net, "head")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert plan.trained_parameters == sum(p.numel() for p in net.head.parameters())
    assert plan.total_parameters == net.num_parameters() and plan.lora_rank == 0


def test_finetune_has_layerwise_lr_decay():
    from speechadapt.training.strategies import prepare

    net = _net()
    plan = prepare(net, "finetune")
    scales = {g["name"]: g["lr_scale"] for g in plan.param_groups}
    assert scales == pytest.approx({"head": 1.0, "encoder.layers.1": 0.8, "encoder.layers.0": 0.64, "frontend": 0.512})
    grouped = [id(p) for g in plan.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # every parameter exactly once
    assert plan.trained_parameters == plan.total_parameters == net.num_parameters()
    assert any(id(net.proj.weight) == id(p) for g in plan.param_groups if g["name"] == "frontend" for p in g["params"])


def test_lora_starts_equal_to_the_base_and_merges_exactly():
    import torch

    from speechadapt.training.strategies import LoRALinear, lora_modules, merge, prepare

    base = _net()
    net = _copy(base)
    plan = prepare(net, "adapters")
    adapters = lora_modules(net)
    # both feed-forward blocks (2 Linear each), attention output and conv pointwise output, per layer
    assert len(adapters) == 6 * len(net.encoder.layers)
    assert all(isinstance(m, LoRALinear) for m in adapters.values())
    assert plan.trained_parameters <= 0.05 * plan.total_parameters and plan.lora_rank >= 1
    assert plan.total_parameters == base.num_parameters()
    assert {n for n, p in net.named_parameters() if p.requires_grad} == \
        {"head.weight", "head.bias"} | {f"{n}.lora_{x}" for n in adapters for x in "AB"}
    torch.testing.assert_close(_out(net), _out(base), rtol=0, atol=1e-5)  # B = 0: a fresh adapter model is the base

    for m in adapters.values():  # as if trained
        torch.nn.init.normal_(m.lora_B, std=0.05)
    adapted = _out(net)
    assert (adapted - _out(base)).abs().max() > 1e-2
    merge(net)
    assert not lora_modules(net)
    assert list(net.state_dict()) == list(base.state_dict())  # the base architecture: loads with load_package
    torch.testing.assert_close(_out(net), adapted, rtol=0, atol=1e-4)


def test_lora_training_leaves_base_tensors_untouched():
    import torch

    from speechadapt.asr.text import CharTokenizer
    from speechadapt.training.loop import TrainConfig, Trainer
    from speechadapt.training.strategies import base_state, prepare

    base = _net()
    net = _copy(base)
    plan = prepare(net, "adapters")
    before = {k: v.clone() for k, v in base_state(net).items()}
    cfg = TrainConfig(model=net.cfg, batch_utterances=4, warmup_steps=1, max_steps=4, learning_rate=1e-2)
    data = _toy(12)
    trainer = Trainer(cfg, net, CharTokenizer(), data, data[:2], param_groups=plan.param_groups)
    for _ in range(4):
        trainer.step()
    after = base_state(net)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["head.weight", "head.bias"]  # the output layer trains; every other base tensor is as loaded
    assert any(m.lora_B.abs().sum() > 0 for n, m in net.named_modules() if n.endswith("ffn.0"))


def test_utterance_batches_with_replay_resume_identically():
    import torch

    from speechadapt.asr.text import CharTokenizer
    from speechadapt.training.loop import TrainConfig, Trainer

    target, source = _toy(20, seed=1), _toy(10, seed=2)
    cfg = TrainConfig(model=_net().cfg, batch_utterances=4, replay_share=0.25, warmup_steps=1, max_steps=20)

    def make():
        return Trainer(cfg, _net(), CharTokenizer(), target, target[:2], replay=source, rank=1, world_size=2)

    a = make()
    batches = [a.next_batch() for _ in range(3)]
    ids_t, ids_s = {id(e) for e in target}, {id(e) for e in source}
    assert all(len(b) == 4 and sum(id(e) in ids_s for e in b) == 1 and sum(id(e) in ids_t for e in b) == 3 for b in batches)
    a.step()
    state = a.state_dict()
    expected = [[id(e) for e in a.next_batch()] for _ in range(5)]  # crosses an epoch (20 / 3 / 2 ranks)
    b = make()
    b.load_state_dict(state)
    assert [[id(e) for e in b.next_batch()] for _ in range(5)] == expected
    assert torch.equal(a.net.head.weight, b.net.head.weight)


# ---------------------------------------------------------------------------------------------------------
# Data checks


def _wavs(folder: Path, n: int, seconds: float = 1.5) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"a{i:03d}.wav"
        sf.write(folder / name, (rng.standard_normal(int(16000 * seconds)) * 0.05).astype(np.float32), 16000, subtype="PCM_16")
        names.append(name)
    return names


def _manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_check_manifest_lists_every_problem(tmp_path):
    from speechadapt.asr.manifest import check_manifest
    from speechadapt.asr.text import CharTokenizer

    names = _wavs(tmp_path, 4)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not a wav")
    m = _manifest(tmp_path / "m.jsonl", [
        {"audio": names[0], "text": "Go LEFT, then 2 up!"},  # normalisable: fine
        {"audio": "missing.wav", "text": "go"},
        {"audio": names[1], "text": "   "},
        {"audio": names[2], "text": "stop Ωmega señor"},  # Ω is a letter no a-z spelling covers; ñ normalises to n
        "{not json",
        {"audio": "broken.wav", "text": "yes"},
        {"audio": names[3], "text": "one two three four five six seven eight nine"},  # too long for 1.5 s
        {"text": "no audio field"},
    ])
    check = check_manifest(m, CharTokenizer(), label="train_manifest", min_utterances=10, min_seconds=30)
    text = "\n".join(check.problems)
    assert check.utterances == 1 and check.seconds == pytest.approx(1.5)
    for needle in ("line 2: audio file", "missing.wav not found", "line 3: empty transcript",
                   "line 4: characters outside the model's alphabet: 'Ω'", "line 5: not valid JSON",
                   "line 6: audio file", "cannot be decoded", "line 7: transcript of", "too long for 1.50 s",
                   "line 8: needs a string field \"audio\"", "too little data: 1 usable utterances (1.5 s of audio)",
                   "at least 10 utterances and 30 s"):
        assert needle in text, needle
    assert "line 1" not in text and "'ñ'" not in text
    assert len(check.problems) == 8


def test_check_manifest_caps_the_list_and_reads_files_only(tmp_path):
    from speechadapt.asr.manifest import MAX_LISTED, check_manifest
    from speechadapt.asr.text import CharTokenizer

    m = _manifest(tmp_path / "m.jsonl", [{"audio": f"gone{i}.wav", "text": "go"} for i in range(30)])
    problems = check_manifest(m, CharTokenizer(), label="dev_manifest", min_utterances=5).problems
    assert len(problems) == MAX_LISTED + 2
    assert problems[MAX_LISTED].endswith("... and 10 more problems")
    assert "too little data: 0 usable utterances" in problems[-1]
    assert "no such file" in check_manifest(tmp_path / "nope.jsonl", CharTokenizer()).problems[0]
    assert "is a folder" in check_manifest(tmp_path, CharTokenizer()).problems[0]


def test_check_job_data(tmp_path):
    from speechadapt.asr.manifest import check_job_data
    from speechadapt.asr.text import CharTokenizer
    from speechadapt.jobspec import JobSpec

    names = _wavs(tmp_path, 30)
    train = _manifest(tmp_path / "train.jsonl", [{"audio": n, "text": "go left"} for n in names[:24]])
    dev = _manifest(tmp_path / "dev.jsonl", [{"audio": n, "text": "stop"} for n in names[24:]])
    spec = JobSpec(name="x", base_model="tiny", train_manifest=str(train), dev_manifest=str(dev))
    assert check_job_data(spec, CharTokenizer()) == []

    small_dev = _manifest(tmp_path / "small-dev.jsonl", [{"audio": n, "text": "stop"} for n in names[20:23]])
    spec = JobSpec(name="x", base_model="tiny", train_manifest=str(_manifest(tmp_path / "t2.jsonl", [{"audio": names[0], "text": "go"}])),
                   dev_manifest=str(small_dev), source_dev_manifest=str(tmp_path / "absent.jsonl"))
    problems = check_job_data(spec, CharTokenizer())
    assert len(problems) == 3, problems  # all at once: train too small, dev too small, source dev missing
    assert problems[0].startswith("train_manifest") and "at least 10 utterances and 3 s" in problems[0]
    assert problems[1].startswith("dev_manifest") and "at least 5 utterances" in problems[1]
    assert problems[2].startswith("source_dev_manifest") and "no such file" in problems[2]

    spec = JobSpec(name="x", base_model="tiny", train_manifest=str(train), dev_manifest=str(train))
    assert any("shares 24 of its 24 audio files" in p for p in check_job_data(spec, CharTokenizer()))


def test_manifest_checks_do_not_import_torch():
    code = ("import sys; from speechadapt.asr.manifest import check_job_data, check_manifest; "
            "from speechadapt.training.adapt import parse_events, decide; print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------------
# Gate, publish, events


def test_gate_reasons():
    from speechadapt.training.adapt import decide

    m = {"base_target_wer": 0.302, "adapted_target_wer": 0.31, "base_source_wer": 0.1, "adapted_source_wer": 0.1}
    d = decide(m, 0.02)
    assert not d.promoted and d.reason.startswith("negative transfer: target dev WER 31.0% >= base 30.2%")
    d = decide({**m, "adapted_target_wer": 0.2, "adapted_source_wer": 0.141}, 0.02)
    assert not d.promoted and d.reason.startswith("forgetting: source dev WER rose 4.1 points (limit 2.0)")
    d = decide({**m, "adapted_target_wer": 0.2, "adapted_source_wer": 0.12}, 0.02)
    assert d.promoted and "30.2% -> 20.0%" in d.reason


def test_publish_takes_the_next_free_version_atomically(tmp_path):
    from speechadapt.asr import load_model
    from speechadapt.asr.features import FeatureConfig
    from speechadapt.asr.text import CharTokenizer
    from speechadapt.training.adapt import find_published, publish

    store, net = tmp_path / "store", _net()
    kw = dict(net=net, tokenizer=CharTokenizer(), features=FeatureConfig())
    assert publish(store, "m", **kw, lineage={"run": "/r/1"}) == 1
    (store / "m" / "2").mkdir()  # another publisher's reservation: taken, skipped
    assert publish(store, "m", **kw, lineage={"run": "/r/2"}) == 3
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1", "2", "3"]  # no temp folders left
    assert load_model("m@3", store=store).card.version == 3
    assert find_published(store, "m", Path("/r/2")) == 3 and find_published(store, "m", Path("/r/9")) == 0


def test_events_are_single_lines_with_the_marker(capsys):
    from speechadapt.training.adapt import emit, event, parse_events

    emit(event("train", step=3, total_steps=10, loss=float("nan"), message="a\nb"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("@@speechadapt-event {")
    (ev,) = parse_events("(RayTrainWorker pid=1) " + out)
    assert ev["phase"] == "train" and ev["loss"] == -1 and ev["dev_wer"] == -1 and ev["message"] == "a\nb"
    assert set(ev) == {"phase", "step", "total_steps", "loss", "dev_wer", "eta_s", "message", "time"}


# ---------------------------------------------------------------------------------------------------------
# Source domain of the tiny model


def test_source_domain_from_the_tiny_lineage(tiny):
    from speechadapt.asr.package import read_card
    from speechadapt.training.adapt import source_domain
    from speechadapt.training.tiny import VOCAB

    d = source_domain(read_card(tiny.store / "tiny" / "1").lineage)
    assert Path(d.train_manifest).samefile(tiny.train_manifest) and d.dev_manifest is None
    assert set(d.voices) == {"en-us", "en-gb"} and set(d.variants) == {"none", "m1", "f2", "m3", "f4"}
    assert set(d.vocabulary) == set(VOCAB) and d.words[0] >= 1 and d.words[1] <= 5


def test_source_speech_for_a_base_trained_on_data_text(tmp_path):
    """A base whose card says its text came from `data text` (lineage.text_sources) and whose corpus is not on
    this machine: the gate's source dev set and the replay set are synthesized from natural sentences of the
    dev and train splits (never the test split), in the base's espeak-ng voices."""
    from speechadapt.training.adapt import SourceDomain, source_domain, synthesize_source, synthesized_from
    from speechadapt.training.corpus_text import split_of

    lineage = {"config": {"train_manifest": "/elsewhere/train/manifest.jsonl"}, "voices": ["en-us", "flite:kal16"],
               "text_sources": {"split": "train", "words": [3, 20], "sources": [{"source": "fortunes"}]}}
    d = source_domain(lineage, lexicon=["a"] * 30000)
    assert d.natural_text and d.vocabulary == () and d.words == (3, 16) and d.train_manifest is None
    for split, seed in (("dev", 5), ("train", 6)):
        manifest = synthesize_source(d, tmp_path / split, 4, seed=seed, split=split)
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        assert len(rows) == 4 and all(r["speaker"].split("+")[0] == "en-us" for r in rows)
        texts = (tmp_path / f".{split}-sentences.txt").read_text().splitlines()
        assert [r["text"] for r in rows] == texts[:4]
        assert all(split_of(t) == split for t in texts)  # templated ones too
    made = (tmp_path / "dev" / "manifest.jsonl").stat().st_mtime_ns
    assert synthesize_source(d, tmp_path / "dev", 4, seed=5, split="dev") == tmp_path / "dev" / "manifest.jsonl"
    assert (tmp_path / "dev" / "manifest.jsonl").stat().st_mtime_ns == made  # the same recipe: reused, not redone
    # the job's description names the voices and text the set really has (flite is not an espeak-ng voice)
    assert synthesized_from(tmp_path / "dev") == \
        "the base model's voices (en-us) and natural sentences (`data text`, dev split)"
    synthesize_source(SourceDomain(), tmp_path / "plain", 2, seed=7)  # no vocabulary, no data text: generated
    assert synthesized_from(tmp_path / "plain").endswith("and generated English")


# ---------------------------------------------------------------------------------------------------------
# Real jobs


def _sentences(path: Path, count: int, seed: int) -> Path:
    from speechadapt.training.tiny import VOCAB

    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(2, 5))) for _ in range(count)) + "\n")
    return path


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny):
    """(train, dev) manifests of the tiny vocabulary in a West Midlands accent (120 + 40 utterances)."""
    from speechadapt.training.synth import SynthConfig, synthesize

    cache = os.environ.get("SPEECHADAPT_TEST_CACHE")
    out = Path(cache) / f"adapt-target-{TARGET_VOICE}" if cache else tmp_path_factory.mktemp("adapt-target")
    made = {}
    for name, count, seed in (("train", 120, 11), ("dev", 40, 12)):
        manifest = out / name / "manifest.jsonl"
        if not manifest.is_file():
            out.mkdir(parents=True, exist_ok=True)
            synthesize(SynthConfig(out_dir=out / name, voices=[TARGET_VOICE], variants=["none", "m1", "f2", "m3", "f4"],
                                   sentences_file=_sentences(out / f"{name}-sentences.txt", count, seed), count=count,
                                   seed=seed, quiet=True))
        made[name] = manifest
    return made["train"], made["dev"]


@pytest.fixture
def store(tmp_path, tiny):
    """A copy of tiny's store: jobs publish into it without touching the session's."""
    dst = tmp_path / "store"
    shutil.copytree(tiny.store / "tiny", dst / "tiny", ignore=shutil.ignore_patterns(".*"))
    return dst


def _adapt(tmp_path: Path, store: Path, spec: dict, *, timeout: float, env: dict | None = None,
           run_dir: Path | None = None) -> tuple[int, list[dict], str, Path]:
    """`python -m speechadapt.training.adapt` with its own local Ray head; (exit code, events, output, run dir)."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run_dir = run_dir or tmp_path / "run"
    cmd = [sys.executable, "-m", "speechadapt.training.adapt", "--spec", str(spec_path), "--store", str(store),
           "--run-dir", str(run_dir), "--job-id", "job-1"]
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never someone else's cluster
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        log, _ = proc.communicate()
        pytest.fail(f"the adaptation job took over {timeout} s:\n{log[-6000:]}")
    from speechadapt.training.adapt import parse_events

    return proc.returncode, parse_events(log), log, run_dir


def _stop_when(tmp_path: Path, store: Path, spec: dict, ready, settle: float = 0.0) -> list[dict]:
    """Start the job as `ray job stop` would see it, SIGTERM it once `ready()` holds (after `settle` seconds more),
    and check that it reported the cancel, left nothing behind, and that its processes (local Ray head included)
    all went down; its events."""
    import threading
    import time

    from speechadapt.training.adapt import parse_events

    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "speechadapt.training.adapt", "--spec", str(tmp_path / "spec.json"), "--store", str(store),
           "--run-dir", str(tmp_path / "run"), "--job-id", "job-1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-6000:]
            time.sleep(0.2)
        time.sleep(settle)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, "".join(lines)[-6000:]
        reader.join(10)
        events = parse_events("".join(lines))
        assert events[-1]["phase"] == "error" and events[-1]["message"].startswith("cancelled"), "".join(lines)[-6000:]
        assert not (tmp_path / "run" / "result.json").exists() and sorted(p.name for p in store.iterdir()) == ["tiny"]
        for _ in range(60):  # the local Ray head it started went down with it
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("processes of the stopped job are still running")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return events


def _spec(target, **kw) -> dict:
    from speechadapt.jobspec import JobSpec

    base = dict(name="tiny-scottish", base_model="tiny@1", train_manifest=str(target[0]), dev_manifest=str(target[1]),
                workers=2, batch_size=8, max_minutes=4.0, seed=0)
    return JobSpec(**{**base, **kw}).to_dict()


def test_bad_data_is_refused_with_every_problem_and_exit_2(tmp_path, store, target):
    names = _wavs(tmp_path / "bad", 3)
    bad = _manifest(tmp_path / "bad" / "m.jsonl", [{"audio": names[0], "text": ""}, {"audio": "x.wav", "text": "go"},
                                                    {"audio": names[1], "text": "日本"}, {"audio": names[2], "text": "go"}])
    code, events, log, run_dir = _adapt(tmp_path, store, _spec(target, train_manifest=str(bad)), timeout=120)
    assert code == 2, log[-3000:]
    assert [e["phase"] for e in events] == ["validate", "error"]
    problems = events[-1]["problems"]
    assert len(problems) == 4 and "line 1: empty transcript" in problems[0] and "x.wav not found" in problems[1]
    assert "'日' '本'" in problems[2] and "too little data" in problems[3]
    assert not (run_dir / "result.json").exists() and sorted(p.name for p in store.iterdir()) == ["tiny"]

    code, events, log, _ = _adapt(tmp_path, store, _spec(target, base_model="nosuch"), timeout=120)
    assert code == 2 and "base_model 'nosuch': model 'nosuch' not found" in events[-1]["message"]


@pytest.mark.slow
def test_adapters_job_publishes_a_better_version(tmp_path, store, target, tiny):
    from speechadapt.asr import evaluate, load_model
    from speechadapt.asr.package import read_card

    domain = [str(_sentences(tmp_path / "domain.txt", 60, 13))]  # target-domain text: a word LM for the candidate
    spec = _spec(target, strategy="adapters", max_epochs=20, source_replay=0.25, domain_text=domain)
    code, events, log, run_dir = _adapt(tmp_path, store, spec, timeout=420)
    assert code == 0, log[-6000:]
    phases = [e["phase"] for e in events]
    assert phases[0] == "validate" and phases[-1] == "result" and "error" not in phases
    first_seen = list(dict.fromkeys(phases))  # a worker's last line may reach the driver's stdout a little late
    assert first_seen == ["validate", "baseline", "train", "evaluate", "publish", "result"], phases
    train_steps = sorted({e["step"] for e in events if e["phase"] == "train" and e["step"] > 0})
    assert train_steps and max(b - a for a, b in zip([0] + train_steps, train_steps)) <= 10
    # 120 utterances / ((8 - 2 replayed) x 2 workers) = 10 steps an epoch
    assert all(e["total_steps"] == 200 for e in events if e["phase"] == "train" and e["step"] > 0)
    assert any("source replay 25% of each batch from the base model's training data" in e["message"] for e in events)
    assert any(e["dev_wer"] >= 0 for e in events if e["phase"] == "train")

    result = events[-1]["result"]
    assert result == json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    print(f"adapters: target dev WER {m['base_target_wer']:.3f} -> {m['adapted_target_wer']:.3f}, source "
          f"{m['base_source_wer']:.3f} -> {m['adapted_source_wer']:.3f}, relatedness {m['relatedness']:.2f}, "
          f"trained {m['trained_parameters']}/{m['total_parameters']}")
    assert result["promoted"] and result["model"] == "tiny-scottish" and result["version"] == 1, result
    assert m["adapted_target_wer"] < m["base_target_wer"]
    # domain_text: tiny has no LM, so the domain LM (its text + the broad word list) is the candidate's LM
    print(f"domain LM: base target dev WER {m['base_target_wer']:.3f}, with the domain LM "
          f"{m['base_target_wer_domain_lm']:.3f}; dev perplexity {m['domain_lm_dev_perplexity']:.1f}")
    assert m["domain_lm_weight"] == 1.0 and 1 < m["domain_lm_dev_perplexity"] < 60  # 20 words in any order
    assert 0 <= m["base_target_wer_domain_lm"] <= 1
    assert any(e["message"].startswith("domain LM built (the base has none)") for e in events)
    assert m["adapted_source_wer"] - m["base_source_wer"] <= 0.02
    assert 0 <= m["relatedness"] <= 1 and m["trained_parameters"] <= 0.05 * m["total_parameters"]
    assert m["total_parameters"] == load_model("tiny@1", store=store).net.num_parameters()

    # the published package: the base architecture, its card's lineage, and the WER the job measured
    card = read_card(store / "tiny-scottish" / "1")
    assert card.hparams == read_card(store / "tiny" / "1").hparams and card.version == 1
    lin = card.lineage
    assert lin["base_model"] == "tiny@1" and lin["strategy"] == "adapters" and lin["job_id"] == "job-1"
    assert lin["spec"]["train_manifest"] == str(target[0]) and lin["metrics"] == m
    assert lin["source_domain"]["vocabulary"] and lin["lora_rank"] >= 1
    from speechadapt.lm import read_lm, sha256_file

    pkg = store / "tiny-scottish" / "1"
    for name in ("lm.arpa", "lexicon.txt", "lm.json"):  # the domain LM travels in the package, sha256-checked
        assert card.files[f"lm/{name}"]["sha256"] == sha256_file(pkg / "lm" / name)
    lm = read_lm(pkg / "lm")
    assert lm.info["domain"]["mode"] == "domain only" and lm.info["order"] == 3 and len(lm.words) > 10000
    assert lm.info["domain"]["text"][0]["sha256"] == sha256_file(domain[0])
    adapted = load_model("tiny-scottish", store=store)
    assert evaluate(adapted, target[1]).wer == pytest.approx(m["adapted_target_wer"])
    assert sorted(p.name for p in (store / "tiny-scottish").iterdir()) == ["1"]  # no temp folders

    # source dev: synthesized from tiny's lineage (its voices and 20 words), kept in the run dir
    assert len((run_dir / "source_dev" / "manifest.jsonl").read_text().splitlines()) == 60
    baseline = json.loads((run_dir / "baseline.json").read_text())
    assert baseline["base_target_wer"] == m["base_target_wer"]
    # relatedness before training: WER ratio and feature distance, in the events and the report
    rel = baseline["transfer"]
    assert rel["ratio"] == m["relatedness"] and rel["feature_distance"] > 0 and rel["source_spread"] >= 0
    assert any(e["phase"] == "baseline" and e["message"].startswith("relatedness ") and "feature distance" in e["message"]
               for e in events)
    from speechadapt.asr.manifest import read_manifest
    from speechadapt.asr.text import normalize_text

    dev_words = sum(len(normalize_text(u.text).split()) for u in read_manifest(target[1]))
    assert 0 < rel["dev_words"] == dev_words < 500  # a small dev set: the job says so before it trains
    assert any(e["phase"] == "baseline" and e["message"].startswith(f"warning: small target dev set: {dev_words} words")
               for e in events)
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert report["relatedness"] == rel
    assert report["decision"]["promoted"] and report["metrics"] == m and report["spec"]["name"] == "tiny-scottish"
    assert report["domain_lm"]["base_target_wer_domain_lm"] == m["base_target_wer_domain_lm"]
    assert report["domain_lm"]["dev_perplexity"]["domain_lm"] == m["domain_lm_dev_perplexity"]
    evals = [h["dev_wer"] for h in report["history"] if h.get("event") == "eval"]
    # the best checkpoint was picked with the serving decoder's closed lexicon (beam search); the gate decodes it
    # with the domain LM on top
    assert evals and 0 <= min(evals) <= m["base_target_wer"]
    assert (run_dir / "report" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same command again: already finished, nothing new published
    code, events, _, _ = _adapt(tmp_path, store, spec, timeout=120)
    assert code == 0 and [e["phase"] for e in events] == ["result"] and events[0]["result"] == result
    assert sorted(p.name for p in (store / "tiny-scottish").iterdir()) == ["1"]


@pytest.mark.slow
def test_stopped_job_resumes_survives_a_killed_worker_and_is_not_promoted(tmp_path, store, target, tiny):
    """One sabotaged job (finetune at learning rate 1.0) through everything that can happen to it: stopped by
    SIGTERM (as `ray job stop` does) after its first checkpoint, run again (resumes from that checkpoint), a
    worker killed mid-run (Ray Train resumes from the next checkpoint), then refused by the gate."""
    # 120 utterances / (6 x 2 workers) = 10 steps an epoch, 50 steps; dev WER + checkpoint every 10 steps
    spec = _spec(target, strategy="finetune", learning_rate=1.0, max_epochs=5, batch_size=6, augment=False,
                 source_dev_manifest=str(tiny.dev_manifest), source_replay=0.0)
    _stop_when(tmp_path, store, spec, lambda: (tmp_path / "run" / "train" / "checkpoint-0000010").is_dir(),
               settle=2.0)  # the controller registers the checkpoint

    # the same command again, and rank 1 dies after step 45 (once)
    code, events, log, run_dir = _adapt(tmp_path, store, spec, timeout=360, env={"SPEECHADAPT_FAIL_AT_STEP": "45"})
    assert code == 0, log[-6000:]
    assert any(e["phase"] == "baseline" and e["message"].startswith("reusing") for e in events)
    assert (run_dir / "train" / ".fault-injected").read_text() == "rank 1 exited at step 45\n"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["steps"] == 50 and summary["restarts"] == 2, summary
    first, second = summary["resumed_from_steps"]
    assert 10 <= first <= 40 and second == 40  # the stop came at or after the checkpoint of step 10
    evals = [(h["event"], h["step"]) for h in summary["history"] if h["event"] != "train"]
    assert evals[-2:] == [("resume", 40), ("eval", 50)], evals
    assert [m for m in (e["message"] for e in events) if m.startswith("resumed from the checkpoint")] == [
        f"resumed from the checkpoint at step {first} (restart 1)", "resumed from the checkpoint at step 40 (restart 2)"]

    result = events[-1]["result"]
    print(f"sabotaged: {result['reason']}")
    assert events[-1]["phase"] == "result" and result == json.loads((run_dir / "result.json").read_text())
    assert not result["promoted"] and result["version"] == 0 and result["model"] == ""
    assert result["reason"].startswith(("negative transfer:", "forgetting:"))
    assert "publish" not in [e["phase"] for e in events] and sorted(p.name for p in store.iterdir()) == ["tiny"]
    assert json.loads((run_dir / "report" / "metrics.json").read_text())["decision"]["promoted"] is False


def test_auto_defaults_follow_the_architecture_and_the_data_size():
    from speechadapt.jobspec import JobSpec
    from speechadapt.training.adapt import choose_defaults

    spec = JobSpec(name="x", base_model="b", train_manifest="t", dev_manifest="d")
    assert (spec.strategy, spec.source_replay) == ("auto", None)  # the four required keys only
    ctc, notes = choose_defaults(spec, "conformer-ctc", 300)
    assert (ctc.strategy, ctc.source_replay) == ("adapters", 0.5) and len(notes) == 2
    small, _ = choose_defaults(spec, "whisper", 300)
    big, _ = choose_defaults(spec, "whisper", 1200)
    assert (small.strategy, small.source_replay, big.strategy) == ("head", 0.25, "adapters")
    mine, notes = choose_defaults(JobSpec(name="x", base_model="b", train_manifest="t", dev_manifest="d",
                                          strategy="finetune", source_replay=0.0), "whisper", 300)
    assert (mine.strategy, mine.source_replay, notes) == ("finetune", 0.0, [])  # what the user set is kept
    assert JobSpec.from_proto(spec.to_proto()) == spec  # auto survives the wire (unset fields)


@pytest.mark.slow
def test_search_job_runs_trials_on_ray_stops_on_sigterm_resumes_and_publishes_the_best(tmp_path, store, target, tiny):
    """`search:` with 2 trials (adapters and finetune, the first two for a conformer-CTC base), each a Ray Train
    run launched by Ray Tune: stopped by SIGTERM once a trial has a checkpoint (every trial process goes down),
    run again to the end; the best trial within the source limit is evaluated, gated and published."""
    spec = _spec(target, workers=1, max_epochs=2, search={"trials": 2})
    events = _stop_when(tmp_path, store, spec, lambda: bool(list((tmp_path / "run" / "trials").glob("*/train/checkpoint-*"))))
    assert any(e["message"].startswith("search: 2 trials") for e in events)

    code, events, log, run_dir = _adapt(tmp_path, store, spec, timeout=600)
    assert code == 0, log[-6000:]
    note = next(e["message"] for e in events if e["message"].startswith("search: 2 trials"))
    assert "1 adapters lr 0.002" in note and "2 finetune lr 0.0005" in note, note
    for i in (1, 2):  # every trial's workers reported, labelled
        assert any(e["phase"] == "train" and e["message"].startswith(f"trial {i}: ") for e in events), i
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    rows = report["search"]["trials"]
    assert [r["strategy"] for r in rows] == ["adapters", "finetune"] and all(r["status"] == "done" for r in rows)
    scored = [r for r in rows if r["best_dev_wer"] is not None]
    best = min(scored, key=lambda r: r["best_dev_wer"])
    assert report["search"]["best"] == best["index"] and report["search"]["concurrent"] >= 1
    limit = report["metrics"]["base_source_wer"] + 0.02
    assert all(r["source_dev_wer"] is None or r["source_dev_wer"] <= limit + 1e-9 for r in scored)
    assert (run_dir / "report" / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = events[-1]["result"]
    print(f"search: {[(r['strategy'], r['best_dev_wer'], r['source_dev_wer']) for r in rows]} -> {result['reason']}")
    assert result["promoted"], result["reason"]
    from speechadapt.asr.package import read_card

    lin = read_card(store / "tiny-scottish" / "1").lineage
    assert lin["strategy"] == best["strategy"] and lin["spec"]["learning_rate"] == best["lr"]
    assert lin["spec"]["search"]["trials"] == 2


def test_search_spec_is_checked_survives_the_wire_and_designs_trials():
    from speechadapt.jobspec import JobSpec, JobSpecError, SearchSpec
    from speechadapt.training.adapt import TrainJob, choose_defaults
    from speechadapt.training.search import best_trial, concurrency, design, trial_minutes

    keys = dict(name="x", base_model="b", train_manifest="t", dev_manifest="d")
    spec = JobSpec.from_dict({**keys, "search": {"trials": 5, "strategies": ["Head", "adapters"]}})
    assert spec.search == SearchSpec(trials=5, strategies=["head", "adapters"])
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_record(json.loads(json.dumps(spec.to_dict()))) == spec  # as the server's job store keeps it
    assert JobSpec.from_proto(JobSpec(**keys).to_proto()).search is None
    with pytest.raises(JobSpecError) as e:
        JobSpec.from_dict({**keys, "search": {"trials": 0, "strategies": ["lora"], "source_replay": [1.5]}})
    assert len(e.value.problems) == 3 and "search.trials 0" in e.value.problems[0]
    with pytest.raises(JobSpecError, match="unknown key"):
        JobSpec.from_dict({**keys, "search": {"trails": 4}})

    whisper, _ = choose_defaults(spec, "whisper", 300)  # replay auto -> 0.25
    trials = design(spec.search, "whisper", whisper)
    assert [(t["strategy"], t["lr"], t["source_replay"]) for t in trials] == [
        ("head", 2e-5, 0.25), ("adapters", 5e-4, 0.25), ("head", 6.67e-6, 0.125), ("adapters", 1.67e-4, 0.125),
        ("head", 6e-5, 0.25)]
    ctc, _ = choose_defaults(JobSpec.from_dict({**keys, "search": {"trials": 3, "learning_rates": [1e-3, 1e-2]}}),
                             "conformer-ctc", 300)
    assert [(t["strategy"], t["lr"]) for t in design(ctc.search, "conformer-ctc", ctc)] == [
        ("adapters", 1e-3), ("finetune", 1e-3), ("head", 1e-3)]

    job = TrainJob(base_path="", strategy="head", train_manifest="", dev_manifest="", replay_manifest="", run_dir="",
                   source_replay=0.0, batch_size=8, lr=1e-3, augment=False, max_epochs=1, max_minutes=10, workers=2,
                   cpus_per_worker=1, gpus_per_worker=0, seed=0, target_utterances=10)
    assert concurrency(SearchSpec(), job, 8.0) == 4 and concurrency(SearchSpec(), job, 1.0) == 1
    assert concurrency(SearchSpec(concurrent=3), job, 1.0) == 3
    assert trial_minutes(SearchSpec(), job, 4, 2) == 10 and trial_minutes(SearchSpec(budget_minutes=6), job, 4, 2) == 3
    rows = [{"index": 0, "status": "done", "best_dev_wer": None}, {"index": 1, "status": "done", "best_dev_wer": 0.3},
            {"index": 2, "status": "failed"}, {"index": 3, "status": "done", "best_dev_wer": 0.2}]
    assert best_trial(rows)["index"] == 3 and best_trial(rows[:1]) is None
