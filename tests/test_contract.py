"""The gRPC contract: generated code matches the .proto files; the services are what the docs say."""

import subprocess
import sys
from pathlib import Path

from speechadapt.v1 import adaptation_pb2, models_pb2, recognizer_pb2

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_not_stale():
    proc = subprocess.run([sys.executable, str(ROOT / "protos" / "gen.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_services_and_methods():
    def methods(mod, name):
        return sorted(m.name for m in mod.DESCRIPTOR.services_by_name[name].methods)

    assert methods(recognizer_pb2, "Recognizer") == ["Recognize", "StreamingRecognize"]
    assert methods(models_pb2, "Models") == ["GetModel", "ListModels"]
    assert methods(adaptation_pb2, "Adaptation") == [
        "CancelJob", "CheckUpload", "GetJob", "GetJobReport", "ListJobs", "SubmitJob", "UploadData", "WatchJob",
    ]
    streaming = recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].methods_by_name["StreamingRecognize"]
    assert streaming.client_streaming and streaming.server_streaming
