"""adapters.aws_sigv4 against AWS's published Signature Version 4 test suite (the 2015 suite:
credentials AKIDEXAMPLE, region us-east-1, service "service", 20150830T123600Z; the expected
signatures as published in the suite's header-signed requests, as shipped with awslabs/aws-c-auth
tests/aws-signing-test-suite/v4/ and AWS's own sig-v4 test-suite archive)."""

from __future__ import annotations

import calendar
import hashlib

import httpx
import pytest
from pydantic import SecretStr

from adapters.aws_sigv4 import (
    AwsCredentials,
    SigV4Auth,
    canonical_query,
    canonical_request,
    canonical_uri,
    sign,
    string_to_sign,
)

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CREDENTIALS = AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key=SecretStr(SECRET))
SESSION = AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key=SecretStr(SECRET),
                         session_token=SecretStr("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"))
AMZ_DATE = "20150830T123600Z"
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
HOST = "https://example.amazonaws.com"
UNRESERVED = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FORM = ("Content-Type", "application/x-www-form-urlencoded")

# (suite case, method, path and query, headers besides Host/X-Amz-Date, body, credentials,
#  SignedHeaders, Signature)
VECTORS = [
    ("get-vanilla", "GET", "/", [], b"", CREDENTIALS, "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("post-vanilla", "POST", "/", [], b"", CREDENTIALS, "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("get-vanilla-query-order-key-case", "GET", "/?Param2=value2&Param1=value1", [], b"", CREDENTIALS,
     "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-query-unreserved", "GET", f"/?{UNRESERVED}={UNRESERVED}", [], b"", CREDENTIALS,
     "host;x-amz-date", "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    ("get-utf8", "GET", "/ሴ", [], b"", CREDENTIALS, "host;x-amz-date",
     "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-vanilla-utf8-query", "GET", "/?ሴ=bar", [], b"", CREDENTIALS, "host;x-amz-date",
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-space-normalized", "GET", "/example space/", [], b"", CREDENTIALS, "host;x-amz-date",
     "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
    ("get-header-value-trim", "GET", "/", [("My-Header1", " value1"), ("My-Header2", ' "a   b   c"')], b"",
     CREDENTIALS, "host;my-header1;my-header2;x-amz-date",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("post-header-key-sort", "POST", "/", [("My-Header1", "value1")], b"", CREDENTIALS,
     "host;my-header1;x-amz-date", "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("get-vanilla-with-session-token", "GET", "/", [], b"", SESSION, "host;x-amz-date;x-amz-security-token",
     "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"),
    ("post-x-www-form-urlencoded", "POST", "/", [FORM], b"Param1=value1", CREDENTIALS,
     "content-type;host;x-amz-date", "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
]


@pytest.mark.parametrize(
    ("case", "method", "target", "headers", "body", "credentials", "signed", "signature"),
    VECTORS, ids=[v[0] for v in VECTORS])
def test_aws_test_suite_vector(case, method, target, headers, body, credentials, signed, signature) -> None:
    added = sign(method, HOST + target, [("Host", "example.amazonaws.com"), *headers], body, credentials,
                 region="us-east-1", service="service", amz_date=AMZ_DATE)

    assert added["Authorization"] == (f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed}, "
                                      f"Signature={signature}")
    assert added["X-Amz-Date"] == AMZ_DATE
    if credentials.session_token is not None:
        assert added["X-Amz-Security-Token"] == credentials.session_token.get_secret_value()
    else:
        assert "X-Amz-Security-Token" not in added


def test_intermediate_steps_of_get_vanilla_and_the_form_post() -> None:
    # The suite's .creq and .sts files for the two cases.
    creq, signed = canonical_request("GET", "/", "", [("Host", "example.amazonaws.com"),
                                                      ("X-Amz-Date", AMZ_DATE)], b"")
    assert creq == ("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert signed == "host;x-amz-date"
    assert string_to_sign(AMZ_DATE, "20150830/us-east-1/service/aws4_request", creq).split("\n") == [
        "AWS4-HMAC-SHA256", AMZ_DATE, "20150830/us-east-1/service/aws4_request",
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"]

    creq, _ = canonical_request("POST", "/", "", [FORM, ("Host", "example.amazonaws.com"),
                                                  ("X-Amz-Date", AMZ_DATE)], b"Param1=value1")
    assert creq.endswith("\n\ncontent-type;host;x-amz-date\n"
                         "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")
    assert hashlib.sha256(creq.encode()).hexdigest() == \
        "42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281"


@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"),
    ("", "/"),
    ("/example%20space/", "/example%20space/"),
    ("/%E1%88%B4", "/%E1%88%B4"),
    ("//example//", "/example/"),
    ("/example/../", "/"),
    ("/./example", "/example"),
])
def test_canonical_uri(raw: str, expected: str) -> None:
    assert canonical_uri(raw) == expected


def test_canonical_query_sorts_by_name_then_value_and_encodes_strictly() -> None:
    assert canonical_query("b=2&a=2&a=1&c=x y&d=%2F") == "a=1&a=2&b=2&c=x%20y&d=%2F"
    assert canonical_query("") == ""


async def test_httpx_auth_signs_the_request_it_sends() -> None:
    """SigV4Auth on a real httpx request reproduces the post-x-www-form-urlencoded vector:
    Content-Length and User-Agent are left unsigned, as a proxy may change them."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    instant = calendar.timegm((2015, 8, 30, 12, 36, 0))
    auth = SigV4Auth(CREDENTIALS, region="us-east-1", service="service", clock=lambda: instant)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        await client.post(HOST + "/", content=b"Param1=value1", headers=dict([FORM]))

    [request] = seen
    assert request.headers["X-Amz-Date"] == AMZ_DATE
    assert request.headers["Authorization"].endswith(
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a")
    assert SECRET not in repr(auth) and SECRET not in str(request.headers)


def test_a_changed_body_or_secret_changes_the_signature() -> None:
    def signature(body: bytes, secret: str) -> str:
        creds = AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key=SecretStr(secret))
        return sign("POST", HOST + "/", [FORM], body, creds, region="us-east-1", service="service",
                    amz_date=AMZ_DATE)["Authorization"]

    reference = signature(b"Param1=value1", SECRET)
    assert signature(b"Param1=value2", SECRET) != reference
    assert signature(b"Param1=value1", SECRET + "x") != reference
