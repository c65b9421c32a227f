"""Domain language models: mixing two backoff models into one (mix_arpa), the weight chosen on dev text, and the
job spec's domain_text (job file, wire, size cap, bad files)."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

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
    w_k, ppl_k = best_mix_weight(a, b, kitchen_only)
    assert w_k > 0.9 and ppl_k[w_k] == min(ppl_k.values())  # EM finds the optimum between grid points
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


# ------------------------------------------------------------------------------------------------ the job spec

def _job_file(tmp_path, domain) -> Path:
    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"name": "kitchen", "base_model": "base-en",
                                                        "train_manifest": "t.jsonl", "dev_manifest": "d.jsonl",
                                                        "domain_text": domain}))
    return tmp_path / "job.yaml"


def test_domain_text_in_the_job_file_and_on_the_wire(tmp_path):
    from speechadapt.client.jobs import spec_proto
    from speechadapt.jobspec import JobSpec
    from speechadapt.v1 import adaptation_pb2 as pb

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("Whisk the egg yolks.\nFold in 2 cups of flour\n")
    (tmp_path / "b.txt").write_text("simmer the stock")
    one = JobSpec.from_yaml(_job_file(tmp_path, "texts/a.txt"))  # one file, relative to the job file
    assert one.domain_text == [str(tmp_path / "texts" / "a.txt")]
    spec = JobSpec.from_yaml(_job_file(tmp_path, ["texts/a.txt", "b.txt"]))
    assert spec.read_domain_text() == "Whisk the egg yolks.\nFold in 2 cups of flour\nsimmer the stock\n"
    msg = spec_proto(spec)  # what `jobs submit` sends: the text, never the client's paths
    wire = pb.JobSpec.FromString(msg.SerializeToString())
    assert wire.domain_text == spec.read_domain_text() and "a.txt" not in str(wire) and "b.txt" not in str(wire)
    # the server's record names the text it stored by sha256; from_proto reads that back as a text:// URI
    record = pb.JobSpec(name="kitchen", base_model="base-en", train_manifest="/t", dev_manifest="/d",
                        domain_text_sha256="ab" * 32, domain_text_lines=3)
    again = JobSpec.from_proto(record)
    assert again.domain_text == ["text://" + "ab" * 32]
    assert again.to_proto().domain_text_sha256 == "ab" * 32 and again.read_domain_text() == ""
    assert JobSpec.from_proto(wire).domain_text == []  # the text itself is the server's to store


def test_bad_domain_text_files_are_refused_before_sending(tmp_path):
    from speechadapt.jobspec import MAX_DOMAIN_TEXT_BYTES, JobSpec, JobSpecError

    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("crème brûlée\n".encode("latin-1"))
    (tmp_path / "big.txt").write_text(("stir the sauce gently\n" * (MAX_DOMAIN_TEXT_BYTES // 22 + 1)))
    with pytest.raises(JobSpecError) as e:
        JobSpec.from_yaml(_job_file(tmp_path, ["missing.txt", "empty.txt", "latin1.txt"]))
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert "missing.txt" in problems[0] and "cannot read it" in problems[0]
    assert "empty.txt" in problems[1] and "empty" in problems[1]
    assert "latin1.txt" in problems[2] and "not UTF-8" in problems[2]
    with pytest.raises(JobSpecError, match=r"over the limit of 4194304 \(4 MiB\)"):
        JobSpec.from_yaml(_job_file(tmp_path, "big.txt"))
    with pytest.raises(JobSpecError, match="text://<64 hex"):
        JobSpec.from_dict({"name": "k", "base_model": "b", "train_manifest": "t", "dev_manifest": "d",
                           "domain_text": ["text://xyz"]})


def test_server_stores_domain_text_and_refuses_oversized_text_and_whisper_bases(make_server, tiny, tmp_path):
    import grpc

    from speechadapt.jobspec import MAX_DOMAIN_TEXT_BYTES
    from speechadapt.server.adaptation import job_message
    from speechadapt.server.datastore import DataStore
    from speechadapt.server.jobs import JobStore
    from speechadapt.v1 import adaptation_pb2 as pb
    from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc

    def spec(**kw):
        return pb.JobSpec(name="tiny-k", base_model="tiny", train_manifest="/nonexistent/t.jsonl",
                          dev_manifest="/nonexistent/d.jsonl", **kw)

    srv = make_server(state_dir=tmp_path / "state")
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.AdaptationStub(ch)
        for s, expect in ((spec(domain_text="x" * (MAX_DOMAIN_TEXT_BYTES + 1)), "over the limit of 4194304"),
                          (spec(domain_text=" \n\n"), "domain_text has no words"),
                          (spec(domain_text_sha256="cd" * 32), "holds no such domain text")):
            with pytest.raises(grpc.RpcError) as e:
                stub.SubmitJob(pb.SubmitJobRequest(spec=s))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expect in e.value.details(), e.value.details()
        assert stub.ListJobs(pb.ListJobsRequest()).jobs == []

    # a record keeps text://<sha256>; GetJob/ListJobs give its sha256 and line count, never the text
    data = DataStore(tmp_path / "other" / "data", max_blob_bytes=1 << 20)
    text = "whisk the egg yolks\nfold in the flour\n" * 1000
    digest, lines = data.put_text(text)
    assert lines == 2000 and data.text_path(digest).read_text() == text
    store = JobStore(tmp_path / "other" / "jobs.sqlite")
    job = store.create({"name": "k", "base_model": "tiny", "train_manifest": "/t", "dev_manifest": "/d",
                        "domain_text": ["text://" + digest]}, tmp_path / "other" / "runs" / "r0")
    msg = job_message(job, data)
    assert (msg.spec.domain_text, msg.spec.domain_text_sha256, msg.spec.domain_text_lines) == ("", digest, 2000)
    assert len(msg.SerializeToString()) < 1000
    assert not msg.metrics.HasField("domain_lm_weight")  # a job without domain text: not set
    store.update(job.id, metrics={"base_target_wer": 0.4, "base_target_wer_domain_lm": 0.3, "domain_lm_weight": 0.962,
                                  "domain_lm_dev_perplexity": 61.6})
    from speechadapt.client.types import Job

    m = Job.from_proto(job_message(store.get(job.id), data)).metrics
    assert (m.base_target_wer_domain_lm, m.domain_lm_weight, m.domain_lm_dev_perplexity) == (0.3, 0.962, 61.6)
    store.close()
    data.close()


def test_whisper_bases_are_refused(make_server, tmp_path):
    import grpc

    from speechadapt.v1 import adaptation_pb2 as pb
    from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc

    srv = make_server(state_dir=tmp_path / "state", default_model=None)
    with grpc.insecure_channel(srv.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.AdaptationStub(ch).SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(
                name="w", base_model="whisper-tiny-en", train_manifest="/t.jsonl", dev_manifest="/d.jsonl",
                domain_text="hello there\n")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "domain_text needs a CTC base with a lexicon decoder" in e.value.details()


def _tiny_with_lm(tiny, tmp_path, seed: int):
    """A copy of tiny@1 carrying a general LM (tmp_path/general, built from random sentences of its words), and its
    characters."""
    import json
    import shutil

    from speechadapt.lm import LmBuildConfig, attach, build
    from speechadapt.training.tiny import VOCAB

    base = tmp_path / "tiny"
    shutil.copytree(tiny.store / "tiny" / "1", base)
    characters = tuple(json.loads((base / "model.json").read_text())["tokenizer"]["tokens"][2:])
    rng = random.Random(seed)
    (tmp_path / "general.txt").write_text("\n".join(" ".join(rng.choice(VOCAB) for _ in range(4)) for _ in range(80)))
    build(LmBuildConfig(texts=(str(tmp_path / "general.txt"),), out=str(tmp_path / "general"), broad_words=None,
                        characters=characters))
    attach(base, tmp_path / "general")
    return base, characters


def test_job_lm_mixes_the_domain_text_into_the_base_lm(tiny, tmp_path):
    """A base that carries an LM: the job's LM is one ARPA mixing both, its weight picked on the dev transcripts."""
    import json

    from speechadapt.lm import read_lm
    from speechadapt.training.domain_lm import build_job_lm, with_lm

    base, characters = _tiny_with_lm(tiny, tmp_path, 5)
    dev_words = [json.loads(line)["text"].split() for line in tiny.dev_manifest.read_text().splitlines()]
    (tmp_path / "domain.txt").write_text("\n".join(" ".join(w) for w in dev_words[:30]) + "\n")  # like the dev text
    section = build_job_lm([str(tmp_path / "domain.txt")], base, str(tiny.dev_manifest), characters, tmp_path / "lm")
    assert section["mode"] == "mixed" and 0.01 <= section["weight"] <= 0.99
    ppl = section["dev_perplexity"]
    assert ppl["mixed"] < ppl["base_lm"], section  # the dev text is closer to the domain text than to the base's
    assert section["weights"][str(section["weight"])] == min(section["weights"].values())
    lm = read_lm(tmp_path / "lm", characters)
    assert set(lm.words) == set(read_lm(tmp_path / "general").words) and lm.decoding == read_lm(tmp_path / "general").decoding
    assert build_job_lm([str(tmp_path / "domain.txt")], base, str(tiny.dev_manifest), characters, tmp_path / "lm") == section
    pkg = with_lm(base, tmp_path / "lm", tmp_path / "base-with-lm")  # the base's own LM replaced, sha256 listed
    card = json.loads((pkg / "model.json").read_text())
    assert card["files"]["lm/lm.arpa"]["sha256"] == lm.info["files"]["lm.arpa"]["sha256"]


def test_cli_refuses_a_bad_domain_text_before_connecting_and_summarises_the_lm(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from speechadapt.client import jobs as J
    from speechadapt.client.types import Job, JobMetrics

    (tmp_path / "empty.txt").write_text("")
    cli = Path(sys.executable).with_name("speechadapt")
    r = subprocess.run([str(cli), "jobs", "submit", str(_job_file(tmp_path, ["empty.txt", "gone.txt"])),
                        "--server", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "empty.txt" in r.stderr and "gone.txt" in r.stderr and "UNAVAILABLE" not in r.stderr, r.stderr
    job = Job("j", "SUCCEEDED", promoted=True, metrics=JobMetrics(
        base_target_wer=0.4, adapted_target_wer=0.2, base_target_wer_domain_lm=0.3, domain_lm_weight=0.962,
        domain_lm_dev_perplexity=61.64))
    assert "  domain LM: weight 0.962, target dev perplexity 61.6; base target WER with it 30.0%" in J.summary_lines(job)
    job = dataclasses.replace(job, metrics=dataclasses.replace(job.metrics, domain_lm_weight=1.0))  # base had no LM
    assert "  domain LM: the base has none, target dev perplexity 61.6; base target WER with it 30.0%" in J.summary_lines(job)
    job = dataclasses.replace(job, metrics=dataclasses.replace(job.metrics, domain_lm_weight=0.0))  # chosen: none
    assert ("  domain LM: not used, the base's LM decoded best, target dev perplexity 61.6; base target WER with it "
            "30.0%") in J.summary_lines(job)


def test_job_lm_weight_is_chosen_by_decoding_within_the_source_limit(tiny, tmp_path):
    """choose_job_lm decodes the candidate with the base's LM alone and with the mix at several weights on the
    target and source dev sets: the lowest target WER within the source limit wins, and the folder it leaves is
    that LM."""
    import json

    from speechadapt.asr import evaluate, load_model
    from speechadapt.lm import read_lm
    from speechadapt.training.domain_lm import DECODE_WEIGHTS, choose_job_lm, pick_weight, with_lm

    base, characters = _tiny_with_lm(tiny, tmp_path, 7)
    lines = tiny.dev_manifest.read_text().splitlines()
    root = tiny.dev_manifest.parent
    for name, part in (("target", lines[:10]), ("source", lines[10:])):  # absolute audio paths: two dev sets
        rows = [dict(json.loads(x), audio=str(root / json.loads(x)["audio"])) for x in part]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    target, source = str(tmp_path / "target.jsonl"), str(tmp_path / "source.jsonl")
    # the domain text: the target dev transcripts, many times: the perplexity weight goes to the top of the range
    (tmp_path / "domain.txt").write_text("".join(json.loads(x)["text"] + "\n" for x in lines[:10]) * 5)

    def choose(limit, out):
        notes = []
        section = choose_job_lm([str(tmp_path / "domain.txt")], base, base, target, source, limit, characters,
                                tmp_path / out, notes.append)
        return section, notes

    free, notes = choose(10.0, "free")
    ppl_weight = free["perplexity_weight"]
    assert ppl_weight > 0.9 and free["mode"] == "mixed"
    weights = [r["weight"] for r in free["decoding"]]
    assert weights == [0.0, *[w for w in DECODE_WEIGHTS if w < ppl_weight], ppl_weight] and len(notes) == len(weights)
    assert "(the base's LM alone)" in notes[0] and "(the perplexity weight)" in notes[-1]
    for r in free["decoding"]:  # each row is the candidate decoded with that LM
        assert 0 <= r["target_dev_wer"] <= 1 and 0 <= r["source_dev_wer"] <= 1
    best = pick_weight(free["decoding"], 10.0)
    assert free["weight"] == best["weight"]
    lm = read_lm(tmp_path / "free", characters)  # the folder left is the chosen LM, its section recorded
    assert lm.info["domain"] == free and not (tmp_path / "free.weights").exists()
    model = load_model(with_lm(base, tmp_path / "free", tmp_path / "check"))
    assert evaluate(model, target).wer == pytest.approx(best["target_dev_wer"])
    assert evaluate(model, source).wer == pytest.approx(best["source_dev_wer"])
    again, notes = choose(10.0, "free")  # built once: a re-run reuses the folder without decoding
    assert again == free and notes == []

    # no row within the limit: the lowest source WER
    lowest_source = min(r["source_dev_wer"] for r in free["decoding"])
    none_within, _ = choose(lowest_source - 0.01, "none")
    assert none_within["decoding"] == free["decoding"] and none_within["source_limit"] == lowest_source - 0.01
    assert none_within["weight"] == pick_weight(free["decoding"], lowest_source - 0.01)["weight"]
    assert next(r for r in free["decoding"] if r["weight"] == none_within["weight"])["source_dev_wer"] == lowest_source
    if none_within["weight"] == 0:  # the base's LM alone: its files as they are
        assert (tmp_path / "none" / "lm.arpa").read_bytes() == (tmp_path / "general" / "lm.arpa").read_bytes()


def test_pick_weight_takes_the_best_target_within_the_source_limit():
    from speechadapt.training.domain_lm import pick_weight

    def row(w, t, s):
        return {"weight": w, "target_dev_wer": t, "source_dev_wer": s}

    rows = [row(0.0, 0.30, 0.120), row(0.5, 0.10, 0.125), row(0.9, 0.10, 0.121), row(0.99, 0.05, 0.170)]
    assert pick_weight(rows, 0.20)["weight"] == 0.99  # the best target when the source allows it
    assert pick_weight(rows, 0.14)["weight"] == 0.9  # 0.99 forgets: of the two at 10%, the lower source WER
    assert pick_weight(rows, 0.12)["weight"] == 0.0  # only the base's LM alone is within
    assert pick_weight(rows, 0.10)["weight"] == 0.0  # none within: the lowest source WER
    tied = [row(0.0, 0.067, 0.129), row(0.1, 0.067, 0.129), row(0.9, 0.067, 0.129)]
    assert pick_weight(tied, 0.135)["weight"] == 0.9  # the dev sets cannot tell: the domain text the user gave
