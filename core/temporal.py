"""Temporal client construction and the search attributes runs are tagged with."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import CompositePayloadConverter, DataConverter
from temporalio.runtime import Runtime
from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from devart.core import settings
from devart.core.errors import ServiceUnavailable
from devart.core.telemetry import tracing as telemetry

#: Filter runs in the Web UI with e.g. ``DevartPipeline = "build-test-review"``.
PIPELINE = SearchAttributeKey.for_keyword("DevartPipeline")
REPOSITORY = SearchAttributeKey.for_keyword("DevartRepository")
TRIGGER = SearchAttributeKey.for_keyword("DevartTrigger")
#: The organisation a run belongs to: the Web UI and ``temporal workflow list`` filter on it.
ORG = SearchAttributeKey.for_keyword("DevartOrg")
SEARCH_ATTRIBUTES = (PIPELINE, REPOSITORY, TRIGGER)

#: One pydantic payload converter for the whole process, with its cache of type adapters.
_PYDANTIC = PydanticPayloadConverter()


class SharedPydanticPayloadConverter(CompositePayloadConverter):
    """The SDK's pydantic payload converter, its parts shared by every instance.

    The SDK builds a data converter (so a payload converter) for every workflow and every workflow activation; the
    pydantic one builds its encoders and an empty cache of type adapters each time, so every run paid for its
    models' adapters again. These instances share ``_PYDANTIC``'s converters, which hold no per-call state (the
    cache is a thread-safe ``lru_cache``); the payloads are byte for byte the same.
    """

    def __init__(self) -> None:
        super().__init__(*_PYDANTIC.converters.values())


#: What every devart client, worker and replayer converts payloads with.
DATA_CONVERTER = DataConverter(payload_converter_class=SharedPydanticPayloadConverter)


def search_attributes(pipeline: str, repository: str, trigger: str, org: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(PIPELINE, pipeline),
            SearchAttributePair(REPOSITORY, repository[:255]),
            SearchAttributePair(TRIGGER, trigger),
            SearchAttributePair(ORG, org),
        ]
    )


async def connect(address: str | None = None, namespace: str | None = None, runtime: Runtime | None = None) -> Client:
    """Connect with the pydantic data converter every devart client and worker must share."""
    cfg = settings.temporal()
    address = address or cfg.address
    try:
        return await Client.connect(
            address,
            namespace=namespace or cfg.namespace,
            data_converter=DATA_CONVERTER,
            runtime=runtime,
            interceptors=telemetry.temporal_interceptors(),
        )
    except RuntimeError as exc:
        raise ServiceUnavailable(
            f"Temporal is not reachable at {address} ({exc}); start it with `devart up` "
            "or set TEMPORAL_ADDRESS to a running server"
        ) from exc


def ui_link(run_id: str, namespace: str | None = None) -> str:
    """The Web UI page of a run (in its organisation's namespace; None: the deployment's)."""
    cfg = settings.temporal()
    return f"{cfg.ui_url.rstrip('/')}/namespaces/{namespace or cfg.namespace}/workflows/{run_id}"


def workflow_runner() -> WorkflowRunner:
    """How a worker runs workflow code: in the SDK's sandbox only when ``TEMPORAL_WORKFLOW_SANDBOX`` asks for it.

    The sandbox re-imports the workflow's module for every workflow run (compiling it again where no bytecode is
    cached) to guard against state shared between runs and non-deterministic calls. devart's workflows keep no
    module state, and every engine's recorded histories are replayed in the sandbox by the test suite
    (``tests/workflows/test_replay.py``, ``test_engine_versions.py``), which catches a non-deterministic call
    before it ships. In a profile of the pipeline worker under load, making a sandbox per run and running in it took
    about a quarter of its samples.
    """
    return SandboxedWorkflowRunner() if settings.temporal().workflow_sandbox else UnsandboxedWorkflowRunner()
