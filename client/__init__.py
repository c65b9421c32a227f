"""The light speechadapt client: streaming and unary recognition, model listing, adaptation jobs, the CLI.

Needs only grpcio, protobuf, numpy, soundfile and pyyaml; never imports torch or ray.

    from speechadapt.client import SpeechClient

    with SpeechClient("127.0.0.1:50051") as client:
        for result in client.stream_file("call.wav", interim_results=True):
            print(result.is_final, result.transcript)
        job = client.wait_job(client.submit_job("job.yaml", upload=True).id)
        print(job.state, job.promoted, job.model_ref)
"""

from speechadapt.client._aio import AsyncSpeechClient
from speechadapt.client._sync import SpeechClient
from speechadapt.client.audio import paced, pcm_chunks, read_audio
from speechadapt.client.types import (
    Alternative, Job, JobEvent, JobMetrics, ModelInfo, Result, SpeechAdaptError, StreamConfig, Word,
)
from speechadapt.client.upload import ManifestError, UploadProgress
from speechadapt.jobspec import JobSpec, JobSpecError

__all__ = [
    "Alternative", "AsyncSpeechClient", "Job", "JobEvent", "JobMetrics", "JobSpec", "JobSpecError", "ManifestError",
    "ModelInfo", "Result", "SpeechAdaptError", "SpeechClient", "StreamConfig", "UploadProgress", "Word", "paced",
    "pcm_chunks", "read_audio",
]
