"""The gRPC server: model registry, streaming sessions, services."""
