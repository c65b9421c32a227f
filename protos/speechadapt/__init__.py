"""speechadapt: adapt speech recognition models on Ray, serve them over streaming gRPC.

The light client API is re-exported here; it never imports torch or ray.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "SpeechClient", "AsyncSpeechClient"]


def __getattr__(name: str):
    if name in ("SpeechClient", "AsyncSpeechClient"):
        from speechadapt import client

        return getattr(client, name)
    raise AttributeError(f"module 'speechadapt' has no attribute {name!r}")
