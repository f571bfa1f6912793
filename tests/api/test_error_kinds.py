"""One error tree, one mapping to HTTP: every kind of domain error has its status, decided in ``api/errors.py``."""

from __future__ import annotations

import json

import pytest

from devart.api.errors import STATUS, error_response, status_of
from devart.core import errors


@pytest.mark.parametrize(("error", "status"), [
    (errors.RunNotFound("no run r-1"), 404),
    (errors.PipelineNotFound("no pipeline p"), 404),
    (errors.ServiceUnavailable("Temporal is down"), 503),
    (errors.Conflict("run r-1 already finished"), 409),
    (errors.Forbidden("agent a is deactivated"), 403),
    (errors.Unauthenticated("no key"), 401),
    (errors.Malformed("not JSON"), 400),
    (errors.TooLarge("past 1 MiB"), 413),
    (errors.TooMany("20 streams", retry_after=5), 429),
])
def test_each_kind_has_its_status(error: errors.DevartError, status: int) -> None:
    assert status_of(error) == status
    response = error_response(error)
    assert response.status_code == status and json.loads(bytes(response.body)) == {"detail": str(error)}


def test_an_invalid_pipeline_names_every_problem() -> None:
    response = error_response(errors.InvalidPipeline("p", ["no stages", "unknown skill 'x'"]))
    assert response.status_code == 422
    assert json.loads(bytes(response.body))["problems"] == ["no stages", "unknown skill 'x'"]


def test_a_cap_says_when_to_come_back() -> None:
    assert error_response(errors.TooMany("cap", retry_after=7)).headers["retry-after"] == "7"


def test_an_error_of_no_kind_is_a_server_error() -> None:
    assert status_of(errors.SandboxError("broken")) == 500


def test_every_kind_is_mapped() -> None:
    kinds = {c for c in vars(errors).values()
             if isinstance(c, type) and c.__bases__ == (errors.DevartError,) and c.__doc__}
    unmapped = {k.__name__ for k in kinds - set(STATUS)} - {"SandboxError", "SkillError"}
    assert not unmapped, unmapped
