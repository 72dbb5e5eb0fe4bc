"""How the worker names what went wrong in a job."""

from __future__ import annotations

import pytest
import torch
from botocore.exceptions import ClientError, EndpointConnectionError
from rq.timeouts import JobTimeoutException

from worker.runner import MAX_ERROR_MESSAGE, classify_error


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (JobTimeoutException("too long"), "timeout"),
        (torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (EndpointConnectionError(endpoint_url="http://s3"), "storage_error"),
        (ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "PutObject"), "storage_error"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "generation_failed"),
        (SystemExit(), "worker_lost"),
    ],
)
def test_errors_are_named(error, name):
    assert classify_error(error).name == name


def test_messages_say_what_broke_and_are_bounded():
    assert classify_error(ValueError("bad")).message == "ValueError: bad"
    assert len(classify_error(ValueError("x" * 5000)).message) == MAX_ERROR_MESSAGE
