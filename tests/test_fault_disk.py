"""A full disk: publishing a model version into a full store, and uploads and job submissions into a full state
dir. The store and the state dir are small tmpfs file systems mounted for the test (root, as CI runs) and filled
with a filler file (or, for inodes, empty files); nothing is simulated. Whatever fails must fail whole, with a
clear error (RESOURCE_EXHAUSTED over gRPC), leave what was stored before intact and the server serving, and the
same operation must succeed once there is space again."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import free_port
from speechadapt.asr.package import read_card, verify
from speechadapt.asr.store import ModelStore, StoreFull
from speechadapt.training.adapt import publish_candidate
from speechadapt.v1 import adaptation_pb2 as apb
from speechadapt.v1 import adaptation_pb2_grpc as apb_grpc
from speechadapt.v1 import models_pb2, models_pb2_grpc
from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

CHUNK = 16 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """`mount(name, size, inodes=None)`: a fresh tmpfs of `size` bytes under tmp_path, unmounted after the test."""
    mounted = []

    def mount(name: str, size: int, inodes: int | None = None):
        path = tmp_path / name
        path.mkdir()
        opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no mount command: a full disk is made with a small tmpfs")
        if r.returncode:
            pytest.skip(f"cannot mount a small tmpfs to fill ({r.stderr.strip()}); run as root (CI does)")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk, leave: int = 0):
    """Write a filler file until the disk is full (appending to an earlier one), then give back `leave` bytes."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        block = b"\xa5" * (1 << 16)
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def fill_inodes(disk, leave: int = 0) -> list:
    """Empty files until no inode is left, then remove `leave` of them."""
    fillers = []
    try:
        while True:
            p = disk / f"inode-{len(fillers)}"
            p.touch()
            fillers.append(p)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    for p in fillers[len(fillers) - leave:]:
        p.unlink()
    return fillers[:len(fillers) - leave]


def free(disk) -> tuple[int, int]:
    st = os.statvfs(disk)
    return st.f_bfree * st.f_frsize, st.f_ffree


def stream_model(srv, samples, model: str = "tiny") -> tuple[str, str]:
    """(the model that served a stream of `samples`, its transcript)."""
    cfg = pb.StreamingRecognitionConfig(config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000,
                                                                     model=model))
    reqs = [pb.StreamingRecognizeRequest(streaming_config=cfg), pb.StreamingRecognizeRequest(audio_content=samples.tobytes())]
    with grpc.insecure_channel(srv.address) as ch:
        resps = list(pb_grpc.RecognizerStub(ch).StreamingRecognize(iter(reqs), timeout=60))
    return resps[0].model, " ".join(r.alternatives[0].transcript for x in resps for r in x.results if r.is_final)


def listed_versions(srv, name: str) -> list[int]:
    with grpc.insecure_channel(srv.address) as ch:
        models = models_pb2_grpc.ModelsStub(ch).ListModels(models_pb2.ListModelsRequest(name=name, all_versions=True),
                                                            timeout=30).models
    return sorted(m.version for m in models)


@pytest.mark.parametrize("out_of", ["space", "inodes"])
def test_publish_into_a_full_store_fails_whole_and_succeeds_with_space(small_disk, make_server, tiny, clean_utterances,
                                                                       out_of):
    source = tiny.store / "tiny" / "1"
    files = read_card(source).files
    size = sum(f["bytes"] for f in files.values())
    store = small_disk("store", size=3 * size + (1 << 20), inodes=64 if out_of == "inodes" else None)
    assert publish_candidate(store, "tiny", source, description="v1") == 1
    srv = make_server(model_store=store)
    samples, text = clean_utterances[0]
    assert stream_model(srv, samples) == ("tiny@1", text)

    if out_of == "space":
        filler = [fill(store, leave=size // 2)]  # the weights file does not fit
    else:
        filler = fill_inodes(store, leave=len(files) + 1)  # the reservation, the temp folder, not every file
    before = free(store)
    with pytest.raises(StoreFull) as e:
        publish_candidate(store, "tiny", source, description="v2")
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and f"no space left in the model store {store}" in msg
    assert "nothing was published" in msg and "tiny@2" in msg
    assert sorted(os.listdir(store / "tiny")) == ["1"]  # no temp folder, no reserved version folder
    assert free(store) == before  # every byte and inode the attempt took was given back
    assert [r.version for r in ModelStore(store).versions("tiny")] == [1]
    verify(store / "tiny" / "1", read_card(store / "tiny" / "1"))  # sha256 of every file as published
    assert listed_versions(srv, "tiny") == [1]
    assert stream_model(srv, samples) == ("tiny@1", text)  # served from the intact version throughout

    for f in filler:
        f.unlink()
    assert publish_candidate(store, "tiny", source, description="v2") == 2
    assert listed_versions(srv, "tiny") == [1, 2]
    assert stream_model(srv, samples) == ("tiny@2", text)  # the new version on the next request
    assert stream_model(srv, samples, "tiny@1") == ("tiny@1", text)


def upload(stub, blob: bytes, start: int = 0, manifest: bytes | None = None):
    sha = hashlib.sha256(blob).hexdigest()
    reqs = [apb.UploadDataRequest(blob=apb.BlobChunk(sha256=sha, total_size=len(blob), offset=i, data=blob[i:i + CHUNK]))
            for i in range(start, len(blob), CHUNK)]
    if manifest is not None:
        reqs.append(apb.UploadDataRequest(manifest=apb.ManifestUpload(name="m", content=manifest)))
    return stub.UploadData(iter(reqs), timeout=60)


def error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value


def test_uploads_and_jobs_into_a_full_state_dir_are_resource_exhausted(small_disk, make_server, tiny, clean_utterances):
    state = small_disk("state", size=4 << 20)
    # jobs fail at once (no Ray); no free-disk floor (ENOSPC itself is the fault); the spec's paths may be named
    srv = make_server(state_dir=state, ray_address=f"http://127.0.0.1:{free_port()}", min_free_disk_bytes=0,
                      data_roots=(Path("/nonexistent"),))
    lines = [json.loads(x) for x in tiny.dev_manifest.read_text().splitlines()]
    a, b = [(tiny.dev_manifest.parent / d["audio"]).read_bytes() for d in lines[:2]]
    assert len(b) > 3 * CHUNK
    sha_a, sha_b = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    line = lambda sha, d: json.dumps({"audio": sha, "text": d["text"]}).encode() + b"\n"
    spec = apb.JobSpec(name="tiny-x", base_model="tiny", train_manifest="/nonexistent/train.jsonl",
                       dev_manifest="/nonexistent/dev.jsonl")  # paths the (absent) cluster would read
    samples, text = clean_utterances[0]
    with grpc.insecure_channel(srv.address) as ch:
        stub = apb_grpc.AdaptationStub(ch)
        first = upload(stub, a, manifest=line(sha_a, lines[0]))
        assert first.utterances == 1
        blob_a = state / "data" / "blobs" / sha_a[:2] / sha_a
        manifests = sorted(os.listdir(state / "data" / "manifests"))

        # room for one chunk and a half of blob b, and for the upload ledger's record of it (a few SQLite pages)
        fill(state, leave=CHUNK + CHUNK // 2 + 16 * 1024)
        e = error(lambda: upload(stub, b))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "is full" in e.details(), e.details()
        assert "CheckUpload" in e.details()
        held = stub.CheckUpload(apb.CheckUploadRequest(sha256=[sha_a, sha_b]), timeout=30).blobs
        assert (held[0].complete, held[0].bytes_present) == (True, len(a))
        present = held[1].bytes_present
        assert not held[1].complete and 0 < present < len(b) and present % CHUNK == 0  # whole chunks: resumes there
        part = blob_a.parent.parent / sha_b[:2] / f"{sha_b}.part"
        assert part.read_bytes() == b[:present]

        fill(state)  # nothing left at all
        e = error(lambda: upload(stub, b"", manifest=line(sha_a, lines[1])))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "manifest 'm' was not stored" in e.details()
        assert sorted(os.listdir(state / "data" / "manifests")) == manifests  # no temp or partial manifest files
        e = error(lambda: stub.SubmitJob(apb.SubmitJobRequest(spec=spec), timeout=60))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the job was not recorded" in e.details(), e.details()
        assert list(stub.ListJobs(apb.ListJobsRequest(), timeout=30).jobs) == []
        assert hashlib.sha256(blob_a.read_bytes()).hexdigest() == sha_a
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert stream_model(srv, samples) == ("tiny@1", text)

        (state / "filler").unlink()
        done = upload(stub, b, start=held[1].bytes_present, manifest=line(sha_a, lines[1]) + line(sha_b, lines[1]))
        assert done.utterances == 2 and done.manifest_uri.startswith("data://")
        assert stub.CheckUpload(apb.CheckUploadRequest(sha256=[sha_b]), timeout=30).blobs[0].complete
        job = stub.SubmitJob(apb.SubmitJobRequest(spec=spec), timeout=60)
        assert [j.id for j in stub.ListJobs(apb.ListJobsRequest(), timeout=30).jobs] == [job.id]
