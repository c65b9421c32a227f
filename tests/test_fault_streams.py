"""Stream faults against a real server on loopback: 1,000 clients that vanish mid-stream, and a slow reader.

The server runs in this process (its counters, threads and memory are measured directly); the vanishing clients
run in their own processes (tests/fault_clients.py), so some of them can die by kill -9 with streams open."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from speechadapt.server.session import RecognitionSession
from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

CLIENTS = Path(__file__).with_name("fault_clients.py")
R = pb.StreamingRecognizeRequest


def wait_until(pred, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def recognize(srv, samples) -> str:
    cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000)
    with grpc.insecure_channel(srv.address) as ch:
        resp = pb_grpc.RecognizerStub(ch).Recognize(pb.RecognizeRequest(config=cfg, audio_content=samples.tobytes()),
                                                    timeout=60)
    return " ".join(r.alternatives[0].transcript for r in resp.results)


def idle(srv) -> bool:
    return srv.server.admission.active == 0 and srv.server.batcher.active == 0


def live_sessions() -> int:
    gc.collect()
    return sum(type(o) is RecognitionSession for o in gc.get_objects())


def vanish(srv, audio: Path, streams: int, batch: int = 50) -> dict:
    """`streams` clients in a client process that all leave mid-stream; returns its summary."""
    out = subprocess.run([sys.executable, str(CLIENTS), srv.address, str(audio), "--streams", str(streams),
                          "--batch", str(batch)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.splitlines()[-1])
    assert sum(summary["outcomes"].values()) == streams, summary
    return summary


def killed(srv, audio: Path, streams: int) -> None:
    """A client process with `streams` open streams, killed with SIGKILL once the server has taken them all."""
    proc = subprocess.Popen([sys.executable, str(CLIENTS), srv.address, str(audio), "--hold", str(streams)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"held {streams}", line + proc.stderr.read()[-3000:]
        assert srv.server.admission.active == streams
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


def test_a_thousand_clients_that_vanish_mid_stream_leave_nothing_behind(make_server, clean_utterances, tmp_path):
    srv = make_server(max_streams=128)
    samples, text = clean_utterances[0]
    audio = tmp_path / "speech.raw"
    audio.write_bytes(samples[: 16000 * 6 // 10].tobytes())  # 0.6 s: a chunk is decoded before the client leaves
    me = psutil.Process()
    # warm up: executors, the batcher thread, allocator pools and the model reach their steady size
    vanish(srv, audio, 100)
    killed(srv, audio, 50)
    wait_until(lambda: idle(srv), what="the warm-up streams to be freed")
    assert recognize(srv, samples) == text
    sessions0 = live_sessions()  # other tests in this worker process may have left some: counted, not ours
    rss0, threads0 = me.memory_info().rss, me.num_threads()

    summary = vanish(srv, audio, 900)
    for _ in range(2):
        killed(srv, audio, 50)
    wait_until(lambda: idle(srv), what="every vanished stream to be freed")
    assert summary["outcomes"].get("left", 0) >= 850, summary  # the rest were refused at the stream limit
    # every session is freed once the tasks still finishing a vanished stream's last decode are done
    wait_until(lambda: live_sessions() <= sessions0, what="every vanished stream's session to be freed")
    wait_until(lambda: me.num_threads() <= threads0 + 4, what=f"threads back near {threads0}")
    growth = (me.memory_info().rss - rss0) / 2**20
    print(f"1,000 vanished streams: {summary['outcomes']} (+100 killed), RSS {growth:+.1f} MiB, threads {threads0} -> "
          f"{me.num_threads()}, batches {srv.server.batcher.stats.batches}")
    assert growth < 32, f"RSS grew by {growth:.0f} MiB over 1,000 vanished streams"
    assert recognize(srv, samples) == text


def test_a_slow_reader_is_ended_without_buffering_and_others_are_served(make_server, clean_utterances):
    srv = make_server(write_timeout_s=2.0, max_streams=4)
    speech = b"".join(s.tobytes() + b"\0\0" * 3200 for s, _ in clean_utterances)  # utterances, 0.2 s pauses
    offered = 512 * 2**20
    taken = 0

    def audio():  # sent as fast as gRPC takes it, never read back
        nonlocal taken
        cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000, max_alternatives=10,
                                   enable_word_time_offsets=True,
                                   endpointing=pb.EndpointingConfig(stop_history_ms=100, vad_aggressiveness=-1))
        yield R(streaming_config=pb.StreamingRecognitionConfig(config=cfg, interim_results=True))
        while taken < offered:
            for i in range(0, len(speech), 32000):
                taken += len(speech[i:i + 32000])
                yield R(audio_content=speech[i:i + 32000])

    # the client's receive window stays at HTTP/2's 64 KiB (no BDP growth): the server's writes block once the
    # client holds 64 KiB of unread responses, a few seconds of decoding in
    with grpc.insecure_channel(srv.address, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        call = pb_grpc.RecognizerStub(ch).StreamingRecognize(audio())
        wait_until(lambda: srv.server.admission.active == 1, what="the slow reader's stream")
        samples, text = clean_utterances[1]
        assert recognize(srv, samples) == text  # served beside it
        wait_until(lambda: srv.server.admission.active == 0, timeout=120, what="the server to end the slow stream")
        held = taken  # what the server decoded plus what its transport buffered: all it can hold of the client's
        assert held < 32 * 2**20, f"the server took {held / 2**20:.0f} MiB from a client that never read"
        responses = 0
        with pytest.raises(grpc.RpcError) as e:
            for _ in call:  # the client reads at last: what was sent, then the status
                responses += 1
    print(f"slow reader: ended after taking {held / 2**20:.1f} MiB of {offered / 2**20:.0f} MiB; {responses} responses "
          "unread until then")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert "took no response of this stream for 2 s" in e.value.details() and responses > 0
    assert recognize(srv, samples) == text
