"""Request ids (``api.request_ids``): a client's sane id is kept, anything else replaced."""

from __future__ import annotations

import re

import pytest

from api.request_ids import MAX_REQUEST_ID_CHARS, new_request_id, request_id_for


@pytest.mark.parametrize(
    "header",
    ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "Root=1-67891233-abcdef012345678912345678",
     "svc:req/42+a@b_c.d", "x" * MAX_REQUEST_ID_CHARS],
)  # fmt: skip
def test_a_sane_client_id_is_kept(header):
    assert request_id_for(header) == header


@pytest.mark.parametrize(
    "header",
    [None, "", "x" * (MAX_REQUEST_ID_CHARS + 1), "has space", "line\nbreak", 'quote"', "tab\t",
     "ünïcode", "semi;colon", "a,b", "{json}", "\x00"],
)  # fmt: skip
def test_anything_else_is_replaced_by_a_new_id(header):
    made = request_id_for(header)
    assert made != header and re.fullmatch(r"[0-9a-f]{32}", made)


def test_new_ids_differ():
    assert len({new_request_id() for _ in range(1000)}) == 1000
