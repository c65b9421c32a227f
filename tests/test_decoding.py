"""Beam search: lexicon, n-best, phrase boosting, on crafted logits and on real (synthesized) speech."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
import soundfile as sf
import torch

from conftest import ServerThread
from speechadapt.asr.beam import BeamDecoder, parse_phrases
from speechadapt.asr.decoding import greedy_decode
from speechadapt.asr.store import BUILTIN_DIR
from speechadapt.asr.text import CharTokenizer
from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

TOK = CharTokenizer()
FS = 0.04


def logits(frames: list[dict[str, float]]) -> torch.Tensor:
    """One row per frame: {char: prob}, the rest of the mass on blank ('_'), space as ' '."""
    out = torch.full((len(frames), len(TOK)), 1e-6)
    for t, probs in enumerate(frames):
        for ch, p in probs.items():
            out[t, 0 if ch == "_" else TOK.tokens.index(ch)] = p
        out[t, 0] += max(0.0, 1 - sum(probs.values()))
    return out.log()


def spell(text: str, ambiguous: dict[int, dict[str, float]] | None = None) -> list[dict[str, float]]:
    """A frame per character with a blank frame after each; `ambiguous` overrides character frames by index."""
    frames = []
    for i, ch in enumerate(text):
        frames.append((ambiguous or {}).get(i, {ch: 0.9}))
        frames.append({"_": 0.9})
    return frames


def test_lexicon_fixes_a_misspelling_and_gives_word_times():
    lg = logits(spell("the wurld", {5: {"u": 0.5, "o": 0.4}}))
    assert greedy_decode(lg, TOK, FS).text == "the wurld"
    hyp = BeamDecoder(TOK, ["the", "world", "word"]).decode(lg, FS, start_frame=100)[0]
    assert hyp.text == "the world"
    (the, world) = hyp.words
    assert the.start == pytest.approx(100 * FS) and the.end == pytest.approx(105 * FS)  # t at frame 0, e at 4
    assert world.start == pytest.approx((100 + 8) * FS) and world.end == pytest.approx((100 + 17) * FS)
    assert 0 < world.confidence < the.confidence <= 1


def test_nbest_lists_distinct_hypotheses_best_first():
    lg = logits(spell("cat", {1: {"a": 0.5, "o": 0.3, "u": 0.15}}))
    hyps = BeamDecoder(TOK, ["cat", "cot", "cut"]).decode(lg, FS, nbest=3)
    assert [h.text for h in hyps] == ["cat", "cot", "cut"]
    assert BeamDecoder(TOK, None).decode(lg, FS, nbest=2)[0].text == "cat"  # character-level search


def test_phrases_change_the_outcome_and_cost_nothing_when_absent():
    lg = logits(spell("a cat sat", {3: {"a": 0.55, "o": 0.4}}))
    lex = BeamDecoder(TOK, ["a", "cat", "cot", "sat"])
    assert lex.decode(lg, FS)[0].text == "a cat sat"
    assert lex.decode(lg, FS, phrases=parse_phrases([(["cot"], 5)], TOK))[0].text == "a cot sat"
    # a boosted word outside the lexicon joins the search for that request only
    small = BeamDecoder(TOK, ["a", "cat", "sat"])
    assert small.decode(lg, FS, phrases=parse_phrases([(["cot"], 5)], TOK))[0].text == "a cot sat"
    assert small.decode(lg, FS)[0].text == "a cat sat"
    # without a lexicon, boosting works on characters
    assert BeamDecoder(TOK, None).decode(lg, FS, phrases=parse_phrases([(["cot"], 5)], TOK))[0].text == "a cot sat"


def test_an_unfinished_phrase_gives_its_bonus_back():
    # "new cat" must not profit from the phrase "new york": the bonus for "new" is refunded
    lg = logits(spell("new cat", {4: {"c": 0.5, "y": 0.02}}))
    dec = BeamDecoder(TOK, ["new", "cat", "york", "cot"])
    plain = dec.decode(lg, FS, nbest=1)[0]
    boosted = dec.decode(lg, FS, phrases=parse_phrases([(["new york"], 8)], TOK))[0]
    assert plain.text == boosted.text == "new cat"


def test_phrase_problems_are_all_listed():
    with pytest.raises(ValueError) as e:
        parse_phrases([(["ok", "東京", "  "], 0), (["fine"], 50)], TOK)
    msg = str(e.value)
    assert "speech_contexts[0].phrases[1]" in msg and "speech_contexts[0].phrases[2]" in msg and "boost must be in" in msg
    assert parse_phrases([(["Smith's 2 Cats"], 0)], TOK)[0].words == ("smith's", "two", "cats")


DRUGS = ["omeprazole", "amoxicillin", "ozempic", "lisinopril", "metformin"]


@pytest.fixture(scope="module")
def drug_audio(tmp_path_factory):
    """Sentences with drug names (outside base-en's lexicon) by a speaker variant base-en never heard."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required: apt-get install espeak-ng (make test installs it)")
    folder = tmp_path_factory.mktemp("drugs")
    out = []
    for drug in DRUGS:
        path = folder / f"{drug}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us+m7", "-w", str(path), f"please order {drug} for today"], check=True)
        samples, rate = sf.read(path, dtype="int16")
        out.append((drug, samples, rate))
    return out


def _final(server, samples, rate, **cfg):
    config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=rate, **cfg)
    reqs = [pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=config))]
    audio = samples.tobytes()
    reqs += [pb.StreamingRecognizeRequest(audio_content=audio[i : i + 4000]) for i in range(0, len(audio), 4000)]
    with grpc.insecure_channel(server.address) as ch:
        resps = list(pb_grpc.RecognizerStub(ch).StreamingRecognize(iter(reqs), timeout=120))
    return [r for resp in resps for r in resp.results if r.is_final]


@pytest.fixture
def base_server(tmp_path):
    """A server with an empty store: the shipped base-en model serves."""
    srv = ServerThread(model_store=tmp_path / "empty", default_model="base-en")
    yield srv
    srv.stop()


def test_boosting_drug_names_through_the_server(base_server, drug_audio):
    """base-en has never seen these words: unboosted they come out as other words, boosted most are right."""
    # the premise: no drug name is a word the decoder knows (finals search the LM's lexicon, a superset of the
    # package's own; "ibuprofen", in /usr/share/dict/words, once broke it)
    words = {line.split("\t", 1)[0] for line in (BUILTIN_DIR / "base-en" / "lm" / "lexicon.txt").read_text().splitlines()}
    assert not words & set(DRUGS)
    srv = base_server
    boost = [pb.SpeechContext(phrases=DRUGS)]
    plain = boosted = 0
    for drug, samples, rate in drug_audio:
        text = " ".join(f.alternatives[0].transcript for f in _final(srv, samples, rate))
        plain += drug in text.split()
        fins = _final(srv, samples, rate, speech_contexts=boost, max_alternatives=3, enable_word_time_offsets=True)
        boosted += drug in " ".join(f.alternatives[0].transcript for f in fins).split()
        for f in fins:
            assert 1 <= len(f.alternatives) <= 3
            assert len({a.transcript for a in f.alternatives}) == len(f.alternatives)
            assert all(a.words and [w.word for w in a.words] == a.transcript.split() for a in f.alternatives)
    assert plain == 0
    assert boosted >= 4, boosted
