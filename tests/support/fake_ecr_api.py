"""An in-memory Amazon ECR API for httpx.MockTransport, shaped after AWS's API reference:
JSON 1.1 over POST, the action in ``X-Amz-Target``, SigV4-signed with service ``ecr``, errors as
``{"__type": ..., "message": ...}`` with HTTP 400.

It checks every request's signature (recomputed from the signed headers and the body with the
secret it knows), and answers GetAuthorizationToken, DescribeRepositories (paged by
``nextToken``, at most ``page_size`` per page) and CreateRepository.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from adapters.aws_sigv4 import canonical_request, signing_key, string_to_sign

TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                   r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
                   r"Signature=(?P<sig>[0-9a-f]{64})")


@dataclass
class FakeEcrApi:
    access_key_id: str
    secret_access_key: str
    region: str
    registry_id: str = "123456789012"
    # The registry password GetAuthorizationToken hands out (the token is base64 of AWS:<this>).
    registry_password: str = "ecr-registry-password"
    token_lifetime: float = 12 * 3600
    page_size: int = 2
    repositories: list[str] = field(default_factory=list)
    # action -> (HTTP status, __type): answer that action with this error.
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def actions(self) -> list[str]:
        return [action for action, _ in self.calls]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        problem = self._check_signature(request)
        if problem is not None:
            self.refused.append(problem)
            kind = "UnrecognizedClientException" if problem == "unknown key" else "InvalidSignatureException"
            return _error(400, kind, "The request signature we calculated does not match the signature "
                                     "you provided.")
        target = request.headers.get("X-Amz-Target", "")
        if request.method != "POST" or not target.startswith(TARGET_PREFIX) or \
                request.headers.get("Content-Type") != "application/x-amz-json-1.1":
            return _error(400, "UnknownOperationException", "not an ECR JSON 1.1 call")
        action = target.removeprefix(TARGET_PREFIX)
        payload = json.loads(request.content or b"{}")
        self.calls.append((action, payload))
        if action in self.failures:
            status, kind = self.failures[action]
            return _error(status, kind, f"{action} failed on purpose")
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            return _error(400, "UnknownOperationException", action)
        return handler(payload)

    # -- actions ---------------------------------------------------------------------------

    def _GetAuthorizationToken(self, payload: dict[str, Any]) -> httpx.Response:
        token = base64.b64encode(f"AWS:{self.registry_password}".encode()).decode()
        return _ok({"authorizationData": [{
            "authorizationToken": token,
            "expiresAt": time.time() + self.token_lifetime,
            "proxyEndpoint": f"https://{self.registry_id}.dkr.ecr.{self.region}.amazonaws.com",
        }]})

    def _DescribeRepositories(self, payload: dict[str, Any]) -> httpx.Response:
        if payload.get("registryId", self.registry_id) != self.registry_id:
            return _error(400, "RegistryNotFoundException", "no such registry")
        wanted = payload.get("repositoryNames")
        if wanted:
            missing = [n for n in wanted if n not in self.repositories]
            if missing:
                return _error(400, "RepositoryNotFoundException",
                              f"The repository with name '{missing[0]}' does not exist in the registry "
                              f"with id '{self.registry_id}'")
            return _ok({"repositories": [self._describe(n) for n in wanted]})
        limit = min(int(payload.get("maxResults", 100)), self.page_size)
        start = int(payload.get("nextToken") or 0)
        names = sorted(self.repositories)[start:start + limit]
        answer: dict[str, Any] = {"repositories": [self._describe(n) for n in names]}
        if start + limit < len(self.repositories):
            answer["nextToken"] = str(start + limit)
        return _ok(answer)

    def _CreateRepository(self, payload: dict[str, Any]) -> httpx.Response:
        name = payload["repositoryName"]
        if name in self.repositories:
            return _error(400, "RepositoryAlreadyExistsException",
                          f"The repository with name '{name}' already exists in the registry "
                          f"with id '{self.registry_id}'")
        self.repositories.append(name)
        return _ok({"repository": self._describe(name)})

    def _describe(self, name: str) -> dict[str, Any]:
        return {
            "repositoryArn": f"arn:aws:ecr:{self.region}:{self.registry_id}:repository/{name}",
            "registryId": self.registry_id,
            "repositoryName": name,
            "repositoryUri": f"{self.registry_id}.dkr.ecr.{self.region}.amazonaws.com/{name}",
            "createdAt": 1.7e9,
            "imageTagMutability": "MUTABLE",
        }

    # -- SigV4, checked the way AWS does ----------------------------------------------------

    def _check_signature(self, request: httpx.Request) -> str | None:
        match = _AUTH.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "no SigV4 Authorization"
        if match["key"] != self.access_key_id:
            return "unknown key"
        amz_date = request.headers.get("X-Amz-Date", "")
        if amz_date[:8] != match["date"] or match["region"] != self.region or match["service"] != "ecr":
            return "wrong scope"
        signed = match["signed"].split(";")
        if not {"host", "x-amz-date", "x-amz-target"} <= set(signed):
            return "host, date and target must be signed"
        headers = [(name, request.headers[name]) for name in signed]
        canonical, _ = canonical_request(request.method, request.url.raw_path.decode().partition("?")[0],
                                         request.url.query.decode(), headers, request.content)
        scope = f"{match['date']}/{self.region}/ecr/aws4_request"
        key = signing_key(SecretStr(self.secret_access_key), match["date"], self.region, "ecr")
        to_sign = string_to_sign(amz_date, scope, canonical).encode()
        expected = hmac.new(key, to_sign, hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, match["sig"]) else "signature mismatch"


def _ok(body: object) -> httpx.Response:
    return httpx.Response(200, json=body, headers={"Content-Type": "application/x-amz-json-1.1"})


def _error(status: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"__type": kind, "message": message},
                          headers={"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": kind})
