"""Clients that vanish mid-stream, for tests/test_fault_streams.py (run as a process: its clients are real
connections, and killing it is the way a client process dies).

    python fault_clients.py ADDRESS AUDIO.raw --streams 900 --batch 50     # prints a JSON summary, exits 0
    python fault_clients.py ADDRESS AUDIO.raw --hold 50                    # prints "held 50", waits to be killed

Each stream has a channel (a connection) of its own and sends the streaming config (LINEAR16, 16 kHz, interim
results) and then, by its number, leaves in one of these ways:

    cancel   waits until the server took the stream (its initial metadata), sends the audio, cancels the call
    close    sends the audio, waits for the initial metadata, closes the channel under the open call
    drop     cancels right after the config, before the server may have read anything
    read     sends the audio, reads the first response, cancels

--hold: that many streams send the config and the audio, are taken by the server, and stay open until the
process is killed (kill -9: no RST_STREAM or GOAWAY, the kernel closes the sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys

import grpc

from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

MODES = ("cancel", "close", "drop", "read")
CHUNK = 3200  # 100 ms of 16 kHz LINEAR16


def config() -> pb.StreamingRecognizeRequest:
    return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000), interim_results=True))


async def send_audio(call, audio: bytes) -> None:
    for i in range(0, len(audio), CHUNK):
        await call.write(pb.StreamingRecognizeRequest(audio_content=audio[i:i + CHUNK]))


async def vanish(address: str, audio: bytes, mode: str) -> str:
    """One stream that leaves in `mode`; returns what happened ("left" or the status the server gave)."""
    channel = grpc.aio.insecure_channel(address)
    try:
        call = pb_grpc.RecognizerStub(channel).StreamingRecognize(timeout=60)
        await call.write(config())
        if mode == "drop":
            call.cancel()
            return "left"
        if mode == "close":
            await send_audio(call, audio)
            await call.initial_metadata()
            await channel.close()  # under the open call
            return "left"
        await call.initial_metadata()
        await send_audio(call, audio)
        if mode == "read":
            await call.read()
        call.cancel()
        return "left"
    except grpc.aio.AioRpcError as e:  # e.g. RESOURCE_EXHAUSTED past --max-streams: it left all the same
        return e.code().name
    finally:
        await channel.close()


async def run(address: str, audio: bytes, streams: int, batch: int) -> dict:
    outcomes: collections.Counter = collections.Counter()
    for start in range(0, streams, batch):
        n = min(batch, streams - start)
        done = await asyncio.gather(*(vanish(address, audio, MODES[(start + i) % len(MODES)]) for i in range(n)))
        outcomes.update(done)
    return {"streams": streams, "outcomes": dict(outcomes)}


async def hold(address: str, audio: bytes, n: int) -> None:
    channels = [grpc.aio.insecure_channel(address) for _ in range(n)]
    calls = [pb_grpc.RecognizerStub(ch).StreamingRecognize() for ch in channels]

    async def open_one(call):
        await call.write(config())
        await call.initial_metadata()
        await send_audio(call, audio)

    await asyncio.gather(*(open_one(c) for c in calls))
    print(f"held {n}", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("address")
    ap.add_argument("audio", help="16 kHz mono LINEAR16 bytes to send on each stream")
    ap.add_argument("--streams", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--hold", type=int, default=0)
    a = ap.parse_args()
    audio = open(a.audio, "rb").read()
    if a.hold:
        asyncio.run(hold(a.address, audio, a.hold))
        return 0
    print(json.dumps(asyncio.run(run(a.address, audio, a.streams, a.batch))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
