"""Word language models: Kneser-Ney math on toy corpora, ARPA files KenLM reads, `speechadapt lm build/attach`,
packages that carry an LM (and refuse a tampered one), and open-vocabulary decoding of espeak-ng speech."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechadapt.ngram import BOS, EOS, UNK, discounts, estimate, read_arpa

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ROOT / "bench" / "data" / "ordinary_sentences.txt"

TOY = [["a", "b"], ["a", "c"], ["a", "b"]]


def p(model, word, *context) -> float:
    return 10 ** model.logprob(word, context)


# ------------------------------------------------------------------------------------------------ KN math

def test_kneser_ney_matches_hand_computed_probabilities():
    """<s> a b </s>, <s> a c </s>, <s> a b </s>, bigrams. Adjusted counts: unigrams are continuation counts
    (a 1: only <s> precedes; b 1, c 1; </s> 2), bigrams raw (<s> a 3, a b 2, a c 1, b </s> 2, c </s> 1). Too few
    counts-of-counts for the formula: discounts fall back to 0.5, 1, 1.5 (count 1, 2, 3+)."""
    m = estimate(TOY, 2)
    assert m.fallback_orders == (1, 2) and m.discounts == ((0.5, 1.0, 1.5), (0.5, 1.0, 1.5))
    # unigrams: total 5, gamma() = (0.5 * 3 + 1.0 * 1) / 5 = 0.5 spread over V = {a, b, c, </s>, <unk>}
    assert p(m, "a") == pytest.approx(0.5 / 5 + 0.5 / 5)
    assert p(m, EOS) == pytest.approx(1 / 5 + 0.5 / 5)
    assert p(m, UNK) == pytest.approx(0.5 / 5)
    assert p(m, "never-seen") == pytest.approx(0.5 / 5)  # unknown words score as <unk>
    # context a: a b 2, a c 1; gamma(a) = (1.0 + 0.5) / 3
    assert p(m, "b", "a") == pytest.approx((2 - 1) / 3 + 0.5 * 0.2)
    assert p(m, "c", "a") == pytest.approx((1 - 0.5) / 3 + 0.5 * 0.2)
    assert p(m, EOS, "a") == pytest.approx(0.5 * 0.3)  # unlisted: backoff(a) * p(</s>)
    # context <s> keeps its raw count 3 (nothing precedes <s>): (3 - 1.5) / 3 + gamma(<s>) p(a), gamma = 1.5 / 3
    assert p(m, "a", BOS) == pytest.approx(0.5 + 0.5 * 0.2)
    assert m.grams[0][("a",)][1] == pytest.approx(math.log10(0.5))  # backoff weight = gamma(a)
    assert m.grams[0][(BOS,)][0] == -99.0


def test_modified_discounts_from_counts_of_counts():
    # n1..n4 = 4, 2, 1, 1: Y = 4 / (4 + 2 * 2) = 0.5, D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3
    d, fell = discounts([1, 1, 1, 1, 2, 2, 3, 4, 7])
    assert not fell and d == pytest.approx((0.5, 1.25, 1.0))
    assert discounts([1, 1, 2]) == ((0.5, 1.0, 1.5), True)  # no 3s or 4s: lmplz's fallback


@pytest.mark.parametrize("prune", [(), (0, 1, 1)])
def test_every_context_sums_to_one(prune):
    rng = random.Random(0)
    words = "the cat dog sat on a mat and ran to house".split()
    sents = [[rng.choice(words) for _ in range(rng.randint(1, 7))] for _ in range(300)]
    m = estimate(sents, 3, vocabulary=["zebra"], prune=prune)
    vocab = [g[0] for g in m.grams[0] if g[0] != BOS]
    assert "zebra" in vocab and UNK in vocab
    contexts = [()] + [g for n in range(2) for g in m.grams[n] if g[-1] != EOS]
    for h in contexts:
        assert sum(p(m, w, *h) for w in vocab) == pytest.approx(1.0, abs=1e-9), h
    full = estimate(sents, 3)
    if prune:
        assert m.counts[3] < full.counts[3] and m.counts[1] == full.counts[1] + 1  # + zebra
    with pytest.raises(ValueError, match="first --prune threshold must be 0"):
        estimate(sents, 3, prune=(1,))


def test_arpa_round_trip_and_kenlm_reads_it(tmp_path):
    m = estimate([s.split() for s in ("the cat sat", "the dog sat", "a cat ran", "the cat ran home")], 3)
    m.write_arpa(tmp_path / "lm.arpa")
    text = (tmp_path / "lm.arpa").read_text()
    assert "\t" in text.splitlines()[7] and text.startswith("\\data\\\nngram 1=")
    back = read_arpa(tmp_path / "lm.arpa")
    assert back.counts == m.counts
    for h, w in [((), "cat"), (("the",), "cat"), (("the", "cat"), "sat"), (("a", "dog"), "home")]:
        assert back.logprob(w, h) == pytest.approx(m.logprob(w, h), abs=1e-5)

    kenlm_module = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import create_word_dict

    words = ["the", "cat", "sat", "dog", "a", "ran", "home", "zzz"]
    wd = create_word_dict({w: [[w]] for w in [*words, UNK]})
    kenlm = kenlm_module.KenLM(str(tmp_path / "lm.arpa"), wd)
    state, total, ours = kenlm.start(False), 0.0, 0.0
    history = [BOS]
    for w in ["the", "cat", "ran", "zzz"]:
        state, s = kenlm.score(state, wd.get_index(w))
        total += s
        ours += m.logprob(w, history)
        history.append(w)
    _, s = kenlm.finish(state)
    assert total + s == pytest.approx(ours + m.logprob(EOS, history), abs=1e-4)  # KenLM scores log10 as we do


# ------------------------------------------------------------------------------------------------ CLI

def _words_file(tmp_path: Path) -> Path:
    f = tmp_path / "words.txt"
    f.write_text("window\nWindows\nkitchen\nzebra's\nNASA\nx\nopen\n")
    return f


def test_lm_build_cli_end_to_end_without_torch(tmp_path):
    text = tmp_path / "domain.txt"
    text.write_text("The window was open. It cost $5!\nthe kitchen window was open\n\n")
    out = tmp_path / "lm"
    code = (
        "import sys; from speechadapt.client.cli import main; "
        f"rc = main(['lm', 'build', '--text', {str(text)!r}, '--order', '3', '--out', {str(out)!r}, "
        f"'--broad-words', {str(_words_file(tmp_path))!r}, '--json']); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'speechbrain', 'torchaudio')]; "
        "assert not heavy, heavy; sys.exit(rc)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info == json.loads((out / "lm.json").read_text())
    assert info["order"] == 3 and info["sources"][0]["sentences"] == 3 and info["sources"][0]["words"] == 13
    from speechadapt.lm import read_lm, sha256_file

    for name in ("lm.arpa", "lexicon.txt"):
        assert info["files"][name]["sha256"] == sha256_file(out / name)
    lm = read_lm(out)
    # the text's words (numbers spelled out) and the word list's lowercase words; no names, no one-letter "x"
    assert {"window", "kitchen", "five", "dollars", "zebra's", "open", "it"} <= set(lm.words)
    assert not {"nasa", "windows", "x", "NASA"} & set(lm.words)
    assert "window\tw i n d o w |" in (out / "lexicon.txt").read_text().splitlines()
    assert info["vocabulary"] == len(lm.words) and int(info["counts"]["1"]) == len(lm.words) + 3
    arpa = read_arpa(out / "lm.arpa")
    assert arpa.logprob("open", ["window", "was"]) > arpa.logprob("kitchen", ["window", "was"])


def test_min_count_maps_rare_words_to_unk_and_attach_flag(tmp_path, base_copy, capsys):
    from speechadapt.asr.package import read_card
    from speechadapt.client.cli import main
    from speechadapt.lm import read_lm

    text = tmp_path / "t.txt"
    text.write_text("the cat sat\nthe cat ran\nthe zebra sat\n")
    vocab = tmp_path / "v.txt"
    vocab.write_text("aardvark\n")
    pkg = tmp_path / "pkg"
    shutil.copytree(base_copy, pkg)
    args = ["lm", "build", "--text", str(text), "--out", str(tmp_path / "lm"), "--min-count", "2",
            "--broad-words", "none", "--vocab-words", str(vocab), "--attach", str(pkg)]
    assert main(args) == 0 and "attached to" in capsys.readouterr().out
    lm = read_lm(tmp_path / "lm")
    assert set(lm.words) == {"the", "cat", "sat", "aardvark"} and lm.info["text_words"] == 3
    arpa = read_arpa(tmp_path / "lm" / "lm.arpa")
    assert (UNK, "sat") in arpa.grams[1]  # "the zebra sat": zebra was seen once
    assert "lm/lm.arpa" in read_card(pkg).files


def test_lm_build_cli_refuses_bad_input(tmp_path, capsys):
    from speechadapt.client.cli import main

    text = tmp_path / "t.txt"
    text.write_text("hello there\n")
    cases = [
        (["--text", str(tmp_path / "missing.txt")], "does not exist"),
        (["--text", str(text), "--order", "1"], "--order must be at least 2"),
        (["--text", str(text), "--broad-words", str(tmp_path / "nowords")], "word list"),
        (["--text", str(text), "--prune", "1"], "first --prune threshold must be 0"),
    ]
    for args, says in cases:
        assert main(["lm", "build", *args, "--out", str(tmp_path / "out")]) == 2, args
        assert says in capsys.readouterr().err, args


# ------------------------------------------------------------------------------------------------ packages

@pytest.fixture(scope="module")
def base_copy(tmp_path_factory):
    """base-en without its LM (the shipped one carries one): these tests attach their own."""
    from speechadapt.asr.store import BUILTIN_DIR

    folder = tmp_path_factory.mktemp("pkg") / "base-en"
    shutil.copytree(BUILTIN_DIR / "base-en", folder)
    from speechadapt.lm import detach

    detach(folder)
    return folder


def _build(tmp_path: Path, lines: list[str], broad: str | None = "/usr/share/dict/words", name: str = "lm") -> Path:
    from speechadapt.lm import LmBuildConfig, build

    text = tmp_path / f"{name}.txt"
    text.write_text("\n".join(lines) + "\n")
    build(LmBuildConfig(texts=(str(text),), out=str(tmp_path / name), broad_words=broad))
    return tmp_path / name


def test_attached_lm_loads_and_a_tampered_one_is_refused(tmp_path, base_copy):
    from speechadapt.asr import load_model
    from speechadapt.asr.package import PackageError, load_package, read_card
    from speechadapt.client.cli import main

    pkg = tmp_path / "pkg"
    lm = _build(tmp_path, ["the window is open", "open the window"], broad=None)
    assert main(["lm", "attach", "--model", str(base_copy), "--lm", str(lm), "--out", str(pkg)]) == 0
    assert not (base_copy / "lm").exists() and "lm/lm.arpa" not in read_card(base_copy).files  # --out: a copy
    assert main(["lm", "attach", "--model", str(base_copy), "--lm", str(lm), "--out", str(pkg)]) == 2  # exists
    assert main(["lm", "attach", "--model", str(pkg), "--lm", str(lm)]) == 0  # again, in place: replaced
    named = tmp_path / "store" / "base-en-lm" / "1"
    assert main(["lm", "attach", "--model", str(pkg), "--lm", str(lm), "--name", "base-en-lm"]) == 2  # needs --out
    assert main(["lm", "attach", "--model", str(base_copy), "--lm", str(lm), "--out", str(named),
                 "--name", "base-en-lm"]) == 0
    assert load_model("base-en-lm", store=tmp_path / "store").lm is not None and read_card(named).name == "base-en-lm"
    card = read_card(pkg)
    assert {"lm/lm.arpa", "lm/lexicon.txt", "lm/lm.json"} <= set(card.files)
    model = load_model(pkg)
    assert model.lm is not None and "window" in model.lm.words and model.beam.lm is model.lm
    bare = tmp_path / "bare"  # detach: the package loads without an LM again
    shutil.copytree(pkg, bare)
    from speechadapt.lm import detach

    assert not any(k.startswith("lm/") for k in detach(bare)["files"]) and not (bare / "lm").exists()
    assert load_model(bare).lm is None

    arpa = pkg / "lm" / "lm.arpa"
    arpa.write_text(arpa.read_text().replace("window", "widow"))
    with pytest.raises(PackageError, match="lm/lm.arpa does not match its recorded sha256"):
        load_package(pkg)
    # a card listing a file outside the package (or outside lm/) is refused too
    data = json.loads((pkg / "model.json").read_text())
    data["files"]["lm/../../x"] = data["files"].pop("lm/lm.arpa")
    (pkg / "model.json").write_text(json.dumps(data))
    with pytest.raises(PackageError, match="outside the package"):
        load_package(pkg)


def test_adaptation_candidate_inherits_the_base_lm_and_publishes_it(tmp_path, base_copy):
    """An adaptation job's candidate gets its base's LM (training.adapt.carry_lm, run after the candidate is
    exported), so it is evaluated and published with it; a base without an LM passes nothing."""
    pytest.importorskip("ray")
    from speechadapt.asr import load_model
    from speechadapt.training.adapt import carry_lm, publish_candidate

    base = tmp_path / "base"
    shutil.copytree(base_copy, base)
    candidate = tmp_path / "candidate"
    shutil.copytree(base_copy, candidate)
    assert not carry_lm(base, candidate) and not (candidate / "lm").exists()
    from speechadapt.lm import attach

    attach(base, _build(tmp_path, ["the window is open"], broad=None))
    assert carry_lm(base, candidate)
    version = publish_candidate(tmp_path / "store", "adapted", candidate, description="test")
    model = load_model(f"adapted@{version}", store=tmp_path / "store")
    assert model.lm is not None and "window" in model.lm.words
    plain = load_model(base_copy)
    assert model.memory_bytes() > plain.memory_bytes()  # the LM search is counted in the memory budget


def test_attach_refuses_a_broken_lm_folder(tmp_path, base_copy):
    from speechadapt.lm import LmError, attach

    lm = _build(tmp_path, ["the window is open"], broad=None)
    (lm / "lexicon.txt").write_text("window\tw i n d o w |\nWIND\tW I N D |\n")
    with pytest.raises(LmError, match="lexicon.txt does not match its recorded sha256"):
        attach(base_copy, lm)
    with pytest.raises(LmError, match="no lm.json"):
        attach(base_copy, tmp_path)
    assert not (base_copy / "lm").exists()


# ------------------------------------------------------------------------------------------------ decoding

def test_phrase_boosting_works_on_top_of_an_lm(tmp_path):
    torch = pytest.importorskip("torch")
    from speechadapt.asr.beam import BeamDecoder, parse_phrases
    from speechadapt.asr.text import CharTokenizer
    from speechadapt.lm import read_lm

    tok = CharTokenizer()
    frames = []
    for i, ch in enumerate("a cat sat"):
        frames.append({"a": 0.55, "o": 0.4} if i == 3 else {ch: 0.9})
        frames.append({"_": 0.9})
    lg = torch.full((len(frames), len(tok)), 1e-6)
    for t, probs in enumerate(frames):
        for ch, pr in probs.items():
            lg[t, 0 if ch == "_" else tok.tokens.index(ch)] = pr
        lg[t, 0] += max(0.0, 1 - sum(probs.values()))
    lm = read_lm(_build(tmp_path, ["a cat sat", "a cot", "the cat sat"], broad=None))
    dec = BeamDecoder(tok, None, lm=lm)
    assert dec.decode(lg.log(), 0.04)[0].text == "a cat sat"
    assert dec.decode(lg.log(), 0.04, phrases=parse_phrases([(["cot"], 8)], tok))[0].text == "a cot sat"
    assert dec.decode(lg.log(), 0.04)[0].text == "a cat sat"


def test_unk_score_lets_out_spellings_on_the_lexicon_trie(tmp_path):
    """unk_score -inf (default): only lexicon words; finite: a word whose spelling is a trie path (a prefix of a
    lexicon word) comes out as its letters."""
    torch = pytest.importorskip("torch")
    from speechadapt.asr.beam import BeamConfig, BeamDecoder
    from speechadapt.asr.text import CharTokenizer
    from speechadapt.lm import read_lm

    tok = CharTokenizer()
    lg = torch.full((18, len(tok)), 1e-6)
    for t, ch in enumerate("a cot sat"):
        lg[2 * t, tok.tokens.index(ch)] = 0.9
        lg[2 * t, 0] = 0.1
        lg[2 * t + 1, 0] = 0.9
    lm = read_lm(_build(tmp_path, ["a cat sat", "a cots sat"], broad=None))
    closed = BeamDecoder(tok, None, BeamConfig(), lm=lm).decode(lg.log(), 0.04)[0]
    assert "cot" not in closed.text.split()
    hyp = BeamDecoder(tok, None, BeamConfig(unk_score=-5.0), lm=lm).decode(lg.log(), 0.04)[0]
    assert hyp.text == "a cot sat" and [w.word for w in hyp.words] == ["a", "cot", "sat"]


def test_lm_decoding_opens_the_vocabulary_of_base_en(tmp_path):
    """20 Harvard sentences spoken by espeak-ng (en-us m3/f2) decoded by base-en: over its own lexicon alone (the
    words of its training text), with the LM it ships (its training text + the broad word list), an LM from
    other text (20 everyday sentences + the broad list), and an LM whose text holds the test sentences. Prints
    WERs and decoding cost; asserts that the shipped LM beats the lexicon alone, that the in-domain LM is not
    worse, and that words outside the training text come out."""
    pytest.importorskip("torch")
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required: apt-get install espeak-ng (make test installs it)")
    import numpy as np
    import torch

    from speechadapt.asr import load_model
    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.beam import BeamConfig, BeamDecoder
    from speechadapt.asr.evaluation import error_rates
    from speechadapt.asr.store import BUILTIN_DIR
    from speechadapt.lm import read_lm
    from speechadapt.training.synth import SynthConfig, synthesize

    lines = [s for s in SENTENCES.read_text().splitlines() if s and not s.startswith("#")]
    test, other = lines[:20], lines[20:]
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n")
    synthesize(SynthConfig(out_dir=tmp_path / "speech", voices=["en-us"], variants=["m3", "f2"],
                           sentences_file=tmp_path / "test.txt", count=20, seed=7, jobs=1, quiet=True))
    rows = [json.loads(x) for x in (tmp_path / "speech" / "manifest.jsonl").read_text().splitlines()]
    model = load_model(BUILTIN_DIR / "base-en")
    old = set(model.lexicon)  # the words of its training text
    assert model.lm is not None, "the shipped base-en carries an LM"
    audio = [load_audio(tmp_path / "speech" / r["audio"], 16000) for r in rows]
    logits = [model.logits(a) for a in audio]
    refs = [r["text"] for r in rows]
    assert any(set(r.split()) - old for r in refs)

    def wer(decoder) -> tuple[float, list[str]]:
        hyps = [decoder.decode(lg, model.frame_seconds)[0].text for lg in logits]
        return error_rates(refs, hyps)[0], hyps

    closed = BeamDecoder(model.tokenizer, model.lexicon, BeamConfig.from_dict(model.card.decoding))
    base_wer, _ = wer(closed)
    shipped_wer, shipped_hyps = wer(model.beam)
    cfg = BeamConfig.from_dict({**model.card.decoding, **read_lm(_build(tmp_path, other, name="general")).decoding})
    general = BeamDecoder(model.tokenizer, model.lexicon, cfg, lm=read_lm(tmp_path / "general"))
    domain = BeamDecoder(model.tokenizer, model.lexicon, cfg, lm=read_lm(_build(tmp_path, lines, name="domain")))
    general_wer, _ = wer(general)
    domain_wer, hyps = wer(domain)
    new_words = sorted({w for h, r in zip(shipped_hyps, refs) for w in set(h.split()) & set(r.split())} - old)

    # decoding cost of one final on a 5 s utterance (two sentences with a pause), best of 5, one torch thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        five = np.concatenate([audio[0], np.zeros(8000, np.float32), audio[1], audio[2]])[:80000]
        lg = model.logits(five)
        cost = {}
        phrases = model.parse_phrases([(["smooth planks", "dark blue"], 10.0)])
        for name, dec, ph in (("lexicon", closed, ()), ("shipped LM", model.beam, ()), ("LM", domain, ()),
                              ("LM + 2 phrases", domain, phrases)):
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                dec.decode(lg, model.frame_seconds, phrases=ph)
                runs.append(time.perf_counter() - t)
            cost[name] = 1000 * min(runs)
    finally:
        torch.set_num_threads(threads)
    print(f"\nbase-en on 20 espeak-ng Harvard sentences: WER its {len(old)}-word lexicon alone {base_wer:.1%}, "
          f"its shipped LM {shipped_wer:.1%}, LM from other text {general_wer:.1%}, LM with the sentences in its "
          f"text {domain_wer:.1%}; words outside the training text recognised with the shipped LM: "
          f"{len(new_words)} ({' '.join(new_words[:12])}); "
          f"ms per final on {len(five) / 16000:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in cost.items()))
    assert len(new_words) >= 3, new_words
    assert shipped_wer < base_wer and domain_wer <= shipped_wer

    # the same LM attached to a package in a store: the server's finals (streamed) decode with it
    from conftest import ServerThread
    from speechadapt.client import SpeechClient
    from speechadapt.lm import attach

    pkg = tmp_path / "store" / "base-en-lm" / "1"
    shutil.copytree(BUILTIN_DIR / "base-en", pkg)
    attach(pkg, tmp_path / "domain")
    t = time.perf_counter()
    with_lm = load_model(pkg)
    print(f"loading base-en with the LM ({len(domain.lexicon)} words): {time.perf_counter() - t:.1f} s")
    # in-process stream: interim results stay greedy, the final is the LM decode
    from speechadapt.asr.decoding import greedy_decode
    from speechadapt.asr.streaming import EndpointConfig

    stream = with_lm.new_stream(16000, EndpointConfig(enabled=False))
    stream.accept_waveform(audio[0])
    stream.input_finished()
    stream.decode()
    assert stream.result().text == greedy_decode(logits[0], model.tokenizer, model.frame_seconds).text != hyps[0]
    assert stream.final_result()[0].text == hyps[0]
    server = ServerThread(model_store=tmp_path / "store")
    try:
        with SpeechClient(server.address) as client:
            served = []
            for r in rows[:4]:
                results = client.recognize(tmp_path / "speech" / r["audio"], model="base-en-lm@1")
                served.append(" ".join(x.alternatives[0].transcript for x in results if x.alternatives).strip())
    finally:
        server.stop()
    assert served == hyps[:4]


def test_lm_tune_picks_the_best_weights_on_a_dev_set_and_records_them(tmp_path, base_copy, capsys):
    """`speechadapt lm tune` on base-en with the LM it ships and 8 espeak-ng Harvard sentences: every grid point
    (plus the current setting) is decoded; the lowest WER is written into lm/lm.json (with a "tuned" section) and
    model.json's sha256 follows, so the package still verifies and serves with the new weights; --dry-run and bad
    input leave the package as it was."""
    pytest.importorskip("torch")
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required: apt-get install espeak-ng (make test installs it)")
    from speechadapt.asr import load_model
    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.evaluation import error_rates
    from speechadapt.asr.package import load_package
    from speechadapt.asr.store import BUILTIN_DIR
    from speechadapt.client.cli import main
    from speechadapt.lm import sha256_file
    from speechadapt.training.synth import SynthConfig, synthesize

    lines = [s for s in SENTENCES.read_text().splitlines() if s and not s.startswith("#")][20:28]
    (tmp_path / "dev.txt").write_text("\n".join(lines) + "\n")
    synthesize(SynthConfig(out_dir=tmp_path / "dev", voices=["en-gb"], variants=["m2", "f4"],
                           sentences_file=tmp_path / "dev.txt", count=8, seed=3, jobs=1, quiet=True))
    dev = tmp_path / "dev" / "manifest.jsonl"
    pkg = tmp_path / "base-en"
    shutil.copytree(BUILTIN_DIR / "base-en", pkg)
    info = pkg / "lm" / "lm.json"
    before = info.read_bytes()
    args = ["lm", "tune", "--model", str(pkg), "--dev", str(dev), "--lm-weights", "0.5", "2.5",
            "--word-scores", "-1", "2"]

    assert main([*args, "--dry-run"]) == 0
    assert "not written (--dry-run)" in capsys.readouterr().out and info.read_bytes() == before
    assert main(["lm", "tune", "--model", str(base_copy), "--dev", str(dev)]) == 2  # no LM in it
    assert "has no word LM" in capsys.readouterr().err
    assert main([*args[:6], "--lm-weights", "-1"]) == 2
    assert "LM weights must lie in [0, 10]" in capsys.readouterr().err and info.read_bytes() == before

    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    current = json.loads(before)["decoding"]
    points = {(r["lm_weight"], r["lm_word_score"]) for r in result["grid"]}
    assert points == {(0.5, -1.0), (0.5, 2.0), (2.5, -1.0), (2.5, 2.0), (current["lm_weight"], current["lm_word_score"])}
    assert result["dev_wer"] == min(r["wer"] for r in result["grid"]) <= result["before"]["dev_wer"]
    written = json.loads(info.read_text())
    assert {k: written["decoding"][k] for k in ("lm_weight", "lm_word_score")} == result["chosen"]
    assert written["tuned"]["dev_sha256"] == sha256_file(dev) and written["tuned"]["utterances"] == 8
    load_package(pkg)  # model.json lists the new lm.json's sha256
    model = load_model(pkg)
    assert (model.beam.cfg.lm_weight, model.beam.cfg.lm_word_score) == tuple(result["chosen"].values())
    rows = [json.loads(x) for x in dev.read_text().splitlines()]
    hyps = [model.transcribe(load_audio(tmp_path / "dev" / r["audio"], 16000)).text for r in rows]
    assert error_rates([r["text"] for r in rows], hyps)[0] == pytest.approx(result["dev_wer"], abs=1e-4)
    print(f"\nlm tune on 8 dev sentences: {result['before']} -> {result['chosen']} WER {result['dev_wer']:.1%}")
