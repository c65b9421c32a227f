"""The light speechadapt client: streaming and unary recognition, model listing, the CLI.

Needs only grpcio, protobuf, numpy, soundfile and pyyaml; never imports torch or ray.

    from speechadapt.client import SpeechClient

    with SpeechClient("127.0.0.1:50051") as client:
        for result in client.stream_file("call.wav", interim_results=True):
            print(result.is_final, result.transcript)
"""

from speechadapt.client._aio import AsyncSpeechClient
from speechadapt.client._sync import SpeechClient
from speechadapt.client.audio import paced, pcm_chunks, read_audio
from speechadapt.client.types import Alternative, ModelInfo, Result, SpeechAdaptError, StreamConfig, Word

__all__ = [
    "Alternative", "AsyncSpeechClient", "ModelInfo", "Result", "SpeechAdaptError", "SpeechClient",
    "StreamConfig", "Word", "paced", "pcm_chunks", "read_audio",
]
