"""Domain language models: mixing two backoff models into one (mix_arpa), the weight chosen on dev text, and the
job spec's domain_text (job file, wire, size cap, bad files)."""

from __future__ import annotations

import math
import random

import pytest

from speechadapt.ngram import BOS, EOS, UNK, best_mix_weight, estimate, mix_arpa, perplexity, read_arpa


def p(model, word, *context) -> float:
    return 10 ** model.logprob(word, context)


def _models():
    rng = random.Random(1)
    general = "the cat dog sat on a mat and ran to house".split()
    kitchen = "whisk the egg yolks fold in flour and simmer stock on a low flame".split()
    a = estimate([[rng.choice(kitchen) for _ in range(rng.randint(2, 8))] for _ in range(200)], 3)
    b = estimate([[rng.choice(general) for _ in range(rng.randint(1, 7))] for _ in range(300)], 3,
                 vocabulary=["zebra"], prune=(0, 1, 1))
    return a, b


def _vocab(m):
    return [g[0] for g in m.grams[0] if g[0] != BOS]


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
def test_mixed_model_sums_to_one_in_every_context(weight):
    a, b = _models()
    m = mix_arpa(a, b, weight)
    vocab = _vocab(m)
    assert set(vocab) == set(_vocab(a)) | set(_vocab(b))  # both vocabularies, "zebra" and <unk> included
    contexts = [()] + [g for n in range(2) for g in m.grams[n] if g[-1] != EOS]
    assert len(contexts) > 100
    for h in contexts:
        assert sum(p(m, w, *h) for w in vocab) == pytest.approx(1.0, abs=1e-6), h


def test_listed_ngrams_get_the_exact_mixture_and_weight_one_gives_a_back():
    a, b = _models()
    m = mix_arpa(a, b, 0.4)
    listed = {g for n in range(3) for g in (*a.grams[n], *b.grams[n]) if g != (BOS,)}
    assert ("zebra",) in listed and ("simmer", "stock") in listed
    for g in listed:  # every n-gram either model lists: the exact mixture of the two models' probabilities
        w, h = g[-1], g[:-1]
        pa = p(a, w, *h) if (w,) in a.grams[0] else 0.0
        pb = p(b, w, *h) if (w,) in b.grams[0] else 0.0
        assert p(m, w, *h) == pytest.approx(0.4 * pa + 0.6 * pb, rel=1e-9), g
    one = mix_arpa(a, b, 1.0)
    for h in [()] + [g for n in range(2) for g in a.grams[n]]:
        for w in _vocab(a):
            assert one.logprob(w, h) == pytest.approx(a.logprob(w, h), abs=1e-9), (h, w)
    assert one.logprob("zebra") == -99.0  # a word only b knows has no probability in a
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_arpa(a, b, 1.5)


def test_mixed_arpa_round_trip_and_best_weight_on_dev_text(tmp_path):
    a, b = _models()
    dev = [["whisk", "the", "egg", "yolks"], ["the", "cat", "sat", "on", "a", "mat"], ["fold", "in", "flour"]]
    weight, ppl = best_mix_weight(a, b, dev)
    assert ppl[weight] == min(ppl.values()) and 0 < weight < 1
    assert ppl[weight] < perplexity(a, dev) and ppl[weight] < perplexity(b, dev)  # the mix beats both on mixed text
    kitchen_only = [["whisk", "the", "egg", "yolks"], ["simmer", "stock", "on", "a", "low", "flame"]]
    assert best_mix_weight(a, b, kitchen_only)[0] == 0.9
    m = mix_arpa(a, b, weight)
    m.write_arpa(tmp_path / "mix.arpa")
    back = read_arpa(tmp_path / "mix.arpa")
    assert back.counts == m.counts
    # the ARPA file's own perplexity is close to the exact mixture's (unlisted n-grams are approximated)
    assert perplexity(back, dev) == pytest.approx(ppl[weight], rel=0.15)
    kenlm_module = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import create_word_dict

    words = _vocab(m)
    wd = create_word_dict({w: [[w]] for w in words})
    kenlm = kenlm_module.KenLM(str(tmp_path / "mix.arpa"), wd)  # KenLM accepts the mixed file
    state = kenlm.start(False)
    total, ours, history = 0.0, 0.0, [BOS]
    for w in ["whisk", "the", "cat"]:
        state, s = kenlm.score(state, wd.get_index(w))
        total += s
        ours += m.logprob(w, history)
        history.append(w)
    assert total == pytest.approx(ours, abs=1e-4)
    assert math.isfinite(total) and UNK in words
