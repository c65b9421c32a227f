"""The Adaptation service. Declared in the contract; jobs and uploads come with the adaptation work,
until then every method answers UNIMPLEMENTED with a clear message."""

from __future__ import annotations

import grpc

from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc

_MSG = "adaptation jobs are not available in this server version yet (Adaptation.{} is declared, not implemented)"


class AdaptationService(pb_grpc.AdaptationServicer):
    async def _unimplemented(self, context, name):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _MSG.format(name))

    async def SubmitJob(self, request, context):
        await self._unimplemented(context, "SubmitJob")

    async def GetJob(self, request, context):
        await self._unimplemented(context, "GetJob")

    async def ListJobs(self, request, context):
        await self._unimplemented(context, "ListJobs")

    async def WatchJob(self, request, context):
        await self._unimplemented(context, "WatchJob")

    async def CancelJob(self, request, context):
        await self._unimplemented(context, "CancelJob")

    async def UploadData(self, request_iterator, context):
        await self._unimplemented(context, "UploadData")

    async def CheckUpload(self, request, context):
        await self._unimplemented(context, "CheckUpload")
