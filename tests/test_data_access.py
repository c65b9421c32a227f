"""What a job may read (`serve --data-root`) and what uploads may store (`--upload-quota-gb`, `--min-free-disk-gb`).

Real components throughout: in-process servers on 127.0.0.1 serving the shipped base-en model (an empty model
store), real manifests and WAV files (tones: the server's data checks read audio headers, not speech), real
symlinks, the real clients, the CLI and the job entrypoint. A job that passes the checks is recorded and then
fails without training, as the servers' Ray address has nothing listening: these tests are about what is let in."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import soundfile as sf

from conftest import ServerThread
from speechadapt.client import SpeechAdaptError, SpeechClient
from speechadapt.client import cli
from speechadapt.client.upload import sha256_file
from speechadapt.jobspec import JobSpec
from speechadapt.v1 import adaptation_pb2 as pb
from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc

NOT_UNDER = "is not under a data root (after following '..' and symlinks)"
TOKENS = {name: secrets.token_urlsafe(24) for name in ("alice", "bob")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real(path) -> str:
    return os.path.realpath(path)


def wav(path: Path, n: int, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A tone of its own frequency (so every file is a distinct blob), 16-bit PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * (200 + 37 * n) * t) * 32767).astype(np.int16), rate, subtype="PCM_16")
    return path


def manifest(path: Path, audio: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"audio": a, "text": "go"}) + "\n" for a in audio))
    return path


@pytest.fixture
def data(tmp_path) -> SimpleNamespace:
    """root/: train.jsonl (10 utterances) and dev.jsonl (5), audio relative to them; outside/: a train manifest of
    its own (10) beside the root, and a spare file. All WAVs have the same size (`size`)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for i in range(15):
        wav(root / "audio" / f"u{i}.wav", i)
    for i in range(11):
        wav(outside / "audio" / f"x{i}.wav", 100 + i)
    return SimpleNamespace(
        root=root, outside=outside, size=(root / "audio" / "u0.wav").stat().st_size,
        train=manifest(root / "train.jsonl", [f"audio/u{i}.wav" for i in range(10)]),
        dev=manifest(root / "dev.jsonl", [f"audio/u{i}.wav" for i in range(10, 15)]),
        outside_train=manifest(outside / "train.jsonl", [f"audio/x{i}.wav" for i in range(10)]))


class Servers:
    """Servers over one state dir (tmp/state), stopped at the end of the test unless stopped before."""

    def __init__(self, tmp_path: Path):
        self.tmp, self.running = tmp_path, []

    def start(self, **config) -> ServerThread:
        config.setdefault("ray_address", f"http://127.0.0.1:{free_port()}")  # nothing listens: jobs fail untrained
        srv = ServerThread(model_store=self.tmp / "store", state_dir=self.tmp / "state", default_model="base-en", **config)
        self.running.append(srv)
        return srv

    def stop(self, srv: ServerThread) -> None:
        self.running.remove(srv)
        srv.stop()


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    yield s
    for srv in list(s.running):
        s.stop(srv)


def spec(data, **fields) -> dict:
    return {"name": "base-en-x", "base_model": "base-en", "train_manifest": str(data.train),
            "dev_manifest": str(data.dev), **fields}


def refused(fn) -> SpeechAdaptError:
    with pytest.raises(SpeechAdaptError) as e:
        fn()
    return e.value


def parts(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state" / "data" / "blobs").rglob("*.part"))


def held(address: str, files: list[Path], token: str = "") -> list[tuple[int, bool]]:
    """(bytes present, complete) of each file's blob on the server."""
    md = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as ch:
        resp = pb_grpc.AdaptationStub(ch).CheckUpload(
            pb.CheckUploadRequest(sha256=[sha256_file(f)[0] for f in files]), timeout=30, metadata=md)
    return [(b.bytes_present, b.complete) for b in resp.blobs]


def no_jobs(srv: ServerThread, tmp_path: Path) -> bool:
    runs = tmp_path / "state" / "runs"
    return srv.server.jobs.store.list([], limit=10) == [] and not (runs.exists() and any(runs.iterdir()))


# ---------------------------------------------------------------------------------------------------------
# --data-root


def test_paths_leaving_the_data_roots_are_refused_before_the_job_exists(tmp_path, data, servers):
    srv = servers.start(data_roots=(data.root,))
    (data.root / "link.jsonl").symlink_to(data.outside_train)
    (data.root / "linked").symlink_to(data.outside, target_is_directory=True)
    escapes = {  # line -> audio path leading out of the root (lines 1-2 stay inside)
        3: "../outside/audio/x0.wav", 4: str(data.outside / "audio" / "x1.wav"), 5: "linked/audio/x2.wav",
        6: "audio/../../outside/audio/x3.wav"}
    mixed = manifest(data.root / "mixed.jsonl", ["audio/u10.wav", "audio/u11.wav", *escapes.values()])
    manifest_paths = {
        "an absolute path elsewhere": str(data.outside_train),
        "'..' out of the root": f"{data.root}/../outside/train.jsonl",
        "a symlink to a file outside": str(data.root / "link.jsonl"),
        "a symlinked folder leading outside": str(data.root / "linked" / "train.jsonl"),
    }
    with SpeechClient(srv.address, timeout=60) as c:
        for what, path in manifest_paths.items():
            e = refused(lambda: c.submit_job(spec(data, train_manifest=path)))
            assert e.code == "PERMISSION_DENIED", (what, e)
            head, *problems = e.message.splitlines()
            assert problems == [f"- train_manifest {path}: not under a data root (after following '..' and symlinks)"], what
            assert f"data roots ({real(data.root)})" in head and "--upload" in head and "--data-root DIR" in head, head
        # audio lines of a manifest inside the root that lead out of it, every one named; any manifest field
        e = refused(lambda: c.submit_job(spec(data, dev_manifest=str(mixed), source_dev_manifest="/etc/passwd")))
        assert e.code == "PERMISSION_DENIED"
        assert e.message.splitlines()[1:] == [
            *(f"- dev_manifest {mixed} line {n}: audio {a!r} {NOT_UNDER}" for n, a in escapes.items()),
            f"- source_dev_manifest /etc/passwd: not under a data root (after following '..' and symlinks)"]
        assert c.list_jobs() == []
    assert no_jobs(srv, tmp_path)


def test_data_under_a_root_is_accepted(tmp_path, data, servers):
    other = tmp_path / "other-root"
    wav(other / "o.wav", 50)
    srv = servers.start(data_roots=(data.root, other))
    (data.root / "alias").symlink_to(data.root / "audio", target_is_directory=True)  # a symlink that stays inside
    dev = manifest(data.root / "sub" / "dev.jsonl", ["../audio/u10.wav", "../alias/u11.wav", real(data.root / "audio" / "u12.wav"),
                                                     "../audio/u13.wav", str(other / "o.wav")])  # the second root
    with SpeechClient(srv.address, timeout=60) as c:
        job = c.submit_job(spec(data, train_manifest=f"{data.root}/audio/../train.jsonl", dev_manifest=str(dev)))
        assert job.state == "QUEUED" and [j.id for j in c.list_jobs()] == [job.id]
        assert job.spec.train_manifest == f"{data.root}/audio/../train.jsonl"  # recorded as given


def test_without_data_roots_only_uploads_are_read(tmp_path, data, servers):
    srv = servers.start()
    with SpeechClient(srv.address, timeout=60) as c:
        e = refused(lambda: c.submit_job(spec(data)))
        assert e.code == "PERMISSION_DENIED" and "data roots (none: only uploads)" in e.message
        assert e.message.splitlines()[1:] == [f"- train_manifest {data.train}: not under a data root (after following "
                                              "'..' and symlinks)", f"- dev_manifest {data.dev}: not under a data root "
                                              "(after following '..' and symlinks)"]
        assert no_jobs(srv, tmp_path)
        job = c.submit_job(spec(data), upload=True)  # the same files, uploaded: data:// URIs
        assert job.state == "QUEUED" and job.spec.train_manifest.startswith("data://")
        assert job.spec.dev_manifest.startswith("data://")
        unknown = "data://" + "7" * 64
        e = refused(lambda: c.submit_job(spec(data, train_manifest=unknown, dev_manifest=job.spec.dev_manifest)))
        assert e.code == "INVALID_ARGUMENT" and unknown in e.message  # a URI is never a permission problem


def test_the_job_checks_its_data_against_the_roots_too(tmp_path, data):
    """Manifests only the Ray workers can read are judged by the job's validate phase, with the server's roots."""
    def run_job(name: str, **fields) -> tuple[int, dict]:
        spec_file = tmp_path / f"{name}.json"
        spec_file.write_text(json.dumps(JobSpec(**spec(data, **fields)).to_dict()))
        r = subprocess.run([sys.executable, "-m", "speechadapt.training.adapt", "--spec", str(spec_file), "--store",
                            str(tmp_path / "store"), "--run-dir", str(tmp_path / name), "--data-root", str(data.root)],
                           capture_output=True, text=True, timeout=600)
        events = [json.loads(line.split("@@speechadapt-event ", 1)[1]) for line in r.stdout.splitlines()
                  if "@@speechadapt-event " in line]
        return r.returncode, events[-1]

    (tmp_path / "store").mkdir()
    (data.root / "linked").symlink_to(data.outside, target_is_directory=True)
    code, last = run_job("out", train_manifest=str(data.root / "linked" / "train.jsonl"))
    assert code == 2 and last["phase"] == "error", last
    assert last["problems"][0] == (f"train_manifest {data.root / 'linked' / 'train.jsonl'}: not under a data root "
                                   "(after following '..' and symlinks)")
    assert "--upload" in last["problems"][-1] and real(data.root) in last["problems"][-1]
    code, last = run_job("in", base_model="no-such-model")  # the data passes; the next check fails
    assert code == 2 and "no-such-model" in last["message"] and "data root" not in last["message"], last


# ---------------------------------------------------------------------------------------------------------
# --upload-quota-gb, --min-free-disk-gb


def test_upload_quota_refuses_before_writing_and_survives_a_restart(tmp_path, data, servers):
    audio = [data.root / "audio" / f"u{i}.wav" for i in range(5)]
    first = manifest(data.root / "first.jsonl", ["audio/u0.wav", "audio/u1.wav"])
    second = manifest(data.root / "second.jsonl", ["audio/u2.wav", "audio/u3.wav"])
    quota = 3 * data.size + 100  # room for three of the files
    srv = servers.start(upload_quota_bytes=quota)
    with SpeechClient(srv.address, timeout=60) as c:
        uri = c.upload_data(first)
        e = refused(lambda: c.upload_data(second))  # u2 fits, u3 would pass the quota
        assert e.code == "RESOURCE_EXHAUSTED", e
        assert (f"upload quota exceeded: this open server's uploads stored {3 * data.size} bytes of blobs; blob "
                f"{sha256_file(audio[3])[0][:12]} ({data.size} bytes) would pass the quota of {quota} bytes") in e.message
        assert "--upload-quota-gb" in e.message
        assert held(srv.address, audio[:4]) == [(data.size, True)] * 3 + [(0, False)]
        assert parts(tmp_path) == []
        assert c.upload_data(first) == uri  # what the server holds costs nothing, even at the quota
    assert srv.server.jobs.data.ledger.usage("") == 3 * data.size
    resolved = srv.server.jobs.data.resolve(uri).read_text().splitlines()
    assert len(resolved) == 2 and all(Path(json.loads(x)["audio"]).is_file() for x in resolved)
    # one blob larger than the whole quota, on a raw stub: refused at its first chunk, nothing written
    big = wav(tmp_path / "big.wav", 9, seconds=4.0)
    blob = big.read_bytes()
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.AdaptationStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadData(iter([pb.UploadDataRequest(blob=pb.BlobChunk(sha256=sha256_file(big)[0], total_size=len(blob),
                                                                         offset=0, data=blob[:4096]))]), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and parts(tmp_path) == []
    # the accounting is in the state dir: a new server refuses the same upload
    servers.stop(srv)
    srv = servers.start(upload_quota_bytes=quota)
    with SpeechClient(srv.address, timeout=60) as c:
        assert refused(lambda: c.upload_data(second)).code == "RESOURCE_EXHAUSTED"
    assert parts(tmp_path) == [] and held(srv.address, audio[:4]) == [(data.size, True)] * 3 + [(0, False)]


def test_each_owner_has_its_own_quota(tmp_path, data, servers):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['alice']} adapt alice\n{TOKENS['bob']} adapt bob\n")
    tokens.chmod(0o600)
    srv = servers.start(auth_tokens=tokens, upload_quota_bytes=2 * data.size + 100)
    m = {k: manifest(data.root / f"{k}.jsonl", [f"audio/u{i}.wav" for i in idx])
         for k, idx in {"a": (0, 1), "b": (2,), "c": (3,), "d": (4,)}.items()}
    with SpeechClient(srv.address, token=TOKENS["alice"], timeout=60) as alice, \
            SpeechClient(srv.address, token=TOKENS["bob"], timeout=60) as bob:
        alice.upload_data(m["a"])
        e = refused(lambda: alice.upload_data(m["b"]))
        assert e.code == "RESOURCE_EXHAUSTED" and "owner 'alice' stored" in e.message, e
        bob.upload_data(m["b"])  # bob's own quota
        bob.upload_data(m["a"])  # alice's blobs: held already, they cost bob nothing
        bob.upload_data(m["c"])
        e = refused(lambda: bob.upload_data(m["d"]))
        assert e.code == "RESOURCE_EXHAUSTED" and "owner 'bob' stored" in e.message, e
    ledger = srv.server.jobs.data.ledger
    assert (ledger.usage("alice"), ledger.usage("bob")) == (2 * data.size, 2 * data.size)
    assert parts(tmp_path) == []


def test_free_disk_floor_refuses_and_removes_the_partial_blob(tmp_path, data, servers):
    audio = [data.root / "audio" / f"u{i}.wav" for i in range(2)]
    blob = audio[0].read_bytes()
    srv = servers.start()
    with grpc.insecure_channel(srv.address) as ch:  # an interrupted upload: half of u0, kept to resume
        r = pb_grpc.AdaptationStub(ch).UploadData(iter([pb.UploadDataRequest(blob=pb.BlobChunk(
            sha256=sha256_file(audio[0])[0], total_size=len(blob), offset=0, data=blob[:len(blob) // 2]))]), timeout=30)
    assert r.bytes_received == len(blob) // 2 and len(parts(tmp_path)) == 1
    servers.stop(srv)
    floor = shutil.disk_usage(tmp_path).free + 2 ** 40  # more than this disk will ever have free
    srv = servers.start(min_free_disk_bytes=floor)
    with SpeechClient(srv.address, timeout=60) as c:
        e = refused(lambda: c.upload_data(manifest(data.root / "two.jsonl", ["audio/u0.wav", "audio/u1.wav"])))
        assert e.code == "RESOURCE_EXHAUSTED" and "the server's disk is nearly full" in e.message, e
        assert f"below its floor of {floor} bytes" in e.message and "--min-free-disk-gb" in e.message
        assert parts(tmp_path) == [] and held(srv.address, audio) == [(0, False), (0, False)]
        assert c.list_models()  # the server keeps serving


# ---------------------------------------------------------------------------------------------------------
# The CLI


def test_cli_prints_the_refusals_and_maps_the_serve_flags(tmp_path, data, servers, capsys):
    srv = servers.start(upload_quota_bytes=data.size)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: base-en-x\nbase_model: base-en\ntrain_manifest: {data.train}\ndev_manifest: {data.dev}\n")
    capsys.readouterr()
    assert cli.main(["jobs", "submit", str(job), "--server", srv.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: PERMISSION_DENIED: the job names data this server may not read") and "--upload" in err
    assert f"- train_manifest {data.train}: not under a data root" in err and "--data-root DIR" in err
    assert cli.main(["jobs", "submit", str(job), "--server", srv.address, "--upload"]) == 1
    err = capsys.readouterr().err
    assert "error: RESOURCE_EXHAUSTED: upload quota exceeded" in err and "--upload-quota-gb" in err, err
    assert no_jobs(srv, tmp_path)

    parser = cli.build_parser()
    config = cli.serve_config(parser.parse_args(["serve", "--data-root", str(data.root), "--data-root",
                                                 str(data.root / "linked-later" / ".."), "--upload-quota-gb", "0.5",
                                                 "--min-free-disk-gb", "0"]))
    assert config.data_roots == (Path(real(data.root)),)  # canonical, each once
    assert (config.upload_quota_bytes, config.min_free_disk_bytes) == (2 ** 29, 0)
    config = cli.serve_config(parser.parse_args(["serve"]))
    assert (config.data_roots, config.upload_quota_bytes, config.min_free_disk_bytes) == ((), None, 2 ** 30)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["serve", "--upload-quota-gb", "-1"])
    assert e.value.code == 2 and "--upload-quota-gb: must be a number of at least 0" in capsys.readouterr().err
