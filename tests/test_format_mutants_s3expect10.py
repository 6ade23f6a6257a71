"""The S3 client sends small PUT bodies at once and large ones after the store's ``100
Continue`` (format/s3backend.py, ``_expect_continue_for_large_bodies``): the saved round trip
per chunk is what keeps uploads fast on a slow link, and the wait is kept where a refused
request would cost a large body. Checked on botocore's own request objects, and on the wire
of a real client against the test store.
"""
from __future__ import annotations

from typing import Any

import pytest
from botocore.awsrequest import AWSRequest

from fixtures_s3 import S3Server
from format import s3backend
from format.s3backend import EXPECT_CONTINUE_FROM, make_client


def _request(**headers: str) -> AWSRequest:
    """botocore's request, with exactly these headers (not prepared: that would add a
    Content-Length of its own)."""
    return AWSRequest(method="PUT", url="http://store.test/bucket/key",
                      headers={"Expect": "100-continue", **headers})


def _after(**headers: str) -> str | None:
    request = _request(**headers)
    s3backend._expect_continue_for_large_bodies(request)
    return request.headers.get("Expect")


@pytest.mark.parametrize("length, expect", [
    (0, None), (1, None), (EXPECT_CONTINUE_FROM - 1, None),
    (EXPECT_CONTINUE_FROM, "100-continue"), (EXPECT_CONTINUE_FROM + 1, "100-continue"),
])
def test_the_wait_is_dropped_below_the_line_and_kept_from_it(length: int, expect: str | None) -> None:
    assert _after(**{"Content-Length": str(length)}) == expect


def test_a_signed_stream_is_judged_by_its_decoded_length() -> None:
    """SigV4's chunked upload: Content-Length counts the signatures too; the body is what the
    decoded length says."""
    small, large = str(EXPECT_CONTINUE_FROM - 1), str(EXPECT_CONTINUE_FROM + 4096)
    assert _after(**{"X-Amz-Decoded-Content-Length": "4096", "Content-Length": large}) is None
    assert _after(**{"X-Amz-Decoded-Content-Length": large, "Content-Length": small}) == "100-continue"


def test_an_unknown_or_unreadable_length_keeps_the_wait() -> None:
    assert _after() == "100-continue"
    assert _after(**{"Content-Length": "many"}) == "100-continue"


def test_a_request_without_the_wait_is_left_alone() -> None:
    request = AWSRequest(method="PUT", url="http://store.test/bucket/key",
                         headers={"Content-Length": "10"})
    s3backend._expect_continue_for_large_bodies(request)
    assert "Expect" not in request.headers and request.headers["Content-Length"] == "10"


def test_the_client_puts_small_bodies_without_waiting(s3: S3Server) -> None:
    """A real client's PutObject, as it leaves for the store (an event handler registered
    after ours sees the request after ours ran)."""
    location = s3.new_location()
    bucket = location[len("s3://"):].split("/")[0]
    client = make_client(attempts=1)
    sent: list[Any] = []
    client.meta.events.register("before-send.s3.PutObject",
                                lambda request, **_: sent.append(request.headers.get("Expect")))
    client.put_object(Bucket=bucket, Key="small", Body=b"s" * 4096)
    client.put_object(Bucket=bucket, Key="large", Body=b"l" * (EXPECT_CONTINUE_FROM + 1))
    assert sent[0] is None
    assert sent[1] in (b"100-continue", "100-continue")
    assert client.get_object(Bucket=bucket, Key="large")["ContentLength"] == EXPECT_CONTINUE_FROM + 1
