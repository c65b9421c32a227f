"""The Models service: what the server can serve."""

from __future__ import annotations

import datetime as dt

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from speechadapt.asr import ModelNotFound
from speechadapt.asr.package import PackageError, read_card
from speechadapt.server.registry import ModelRegistry
from speechadapt.v1 import models_pb2 as pb
from speechadapt.v1 import models_pb2_grpc as pb_grpc


def model_message(ref, card, is_default: bool) -> pb.Model:
    created = Timestamp()
    if card.created:
        created.FromDatetime(dt.datetime.fromisoformat(card.created))
    lineage = card.lineage or {}
    return pb.Model(
        name=ref.name,
        version=ref.version,
        architecture=card.architecture,
        sample_rate_hertz=card.sample_rate,
        language_code=card.language,
        metrics={k: float(v) for k, v in (card.metrics or {}).items() if isinstance(v, (int, float))},
        lineage=pb.Lineage(
            base_model=str(lineage.get("base_model", "")),
            job_id=str(lineage.get("job_id", "")),
            strategy=str(lineage.get("strategy", "")),
            training_data=str(lineage.get("training_data", "")),
        ),
        create_time=created,
        num_parameters=card.num_parameters,
        source="builtin" if ref.source == "builtin" else "store",
        is_default=is_default,
        description=card.description,
        adapter_base=str((card.base or {}).get("model", "")),
        package_bytes=card.files_bytes,
    )


class ModelsService(pb_grpc.ModelsServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def _default(self):
        try:
            return self.registry.resolve("")
        except (ModelNotFound, ValueError):
            return None

    async def ListModels(self, request, context):
        if request.name:
            try:
                self.registry.store.resolve(request.name)
            except ValueError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except ModelNotFound as e:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        default = self._default()
        models = []
        for ref, card in self.registry.cards(request.name, request.all_versions):
            models.append(model_message(ref, card, default is not None and (ref.name, ref.version) == (default.name, default.version)))
        return pb.ListModelsResponse(models=models)

    async def GetModel(self, request, context):
        try:
            ref = self.registry.resolve(request.model)
            card = read_card(ref.path)
        except ValueError as e:  # bad reference, or a malformed card
            code = grpc.StatusCode.FAILED_PRECONDITION if isinstance(e, PackageError) else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(e))
        except ModelNotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        default = self._default()
        return model_message(ref, card, default is not None and (ref.name, ref.version) == (default.name, default.version))
