"""devart's data converter writes what the SDK's pydantic converter writes, without rebuilding it for every use."""

from __future__ import annotations

from temporalio.contrib.pydantic import pydantic_data_converter

from devart.core.contracts import StageResult, StageState, StageStatus
from devart.core.temporal import DATA_CONVERTER, SharedPydanticPayloadConverter


def test_payloads_are_the_sdks_byte_for_byte_and_read_back() -> None:
    value = StageState(name="build", status=StageStatus.SUCCEEDED,
                       result=StageResult(status="succeeded", summary="ok", output={"n": 1}, attempt=2))
    ours = DATA_CONVERTER.payload_converter.to_payloads([value, {"plain": [1, "two"]}, None])
    sdk = pydantic_data_converter.payload_converter.to_payloads([value, {"plain": [1, "two"]}, None])
    assert [p.SerializeToString() for p in ours] == [p.SerializeToString() for p in sdk]
    back = DATA_CONVERTER.payload_converter.from_payloads(ours, [StageState, dict, type(None)])
    assert back == [value, {"plain": [1, "two"]}, None]


def test_every_instance_shares_one_cache_of_type_adapters() -> None:
    # The SDK makes a payload converter per workflow activation: each must find the adapters the others built
    first, second = SharedPydanticPayloadConverter(), SharedPydanticPayloadConverter()
    assert first is not second
    assert all(first.converters[key] is second.converters[key] for key in first.converters)
    first.from_payloads(first.to_payloads([StageResult(status="failed", summary="no", attempt=1)]), [StageResult])
    adapters = second.converters[b"json/plain"]._type_adapter  # type: ignore[attr-defined]
    hits = adapters.cache_info().hits
    adapters(StageResult)  # the adapter the first instance built
    assert adapters.cache_info().hits == hits + 1
