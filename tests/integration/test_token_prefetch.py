"""Tokens fetched ahead, many repositories per token (issue 21): against the real registry in
token mode and the test token service, which records every fetch and what it granted."""

from __future__ import annotations

import asyncio

import pytest

from adapters.distribution.auth import TOKEN_SCOPES_PER_FETCH
from adapters.errors import AuthenticationError
from tests.support.endpoints import client_for

REPOSITORIES = [f"team/app-{i}" for i in range(2 * TOKEN_SCOPES_PER_FETCH + 3)]


@pytest.fixture
def filled(make_registry, make_corpus):
    registry = make_registry("token")
    corpus = make_corpus(registry)
    for name in [*REPOSITORIES, "other/app"]:
        corpus.push(name, "v1", layers=1)
    return registry


async def test_a_token_serves_many_repositories_and_every_request_finds_it(filled) -> None:
    tokens = filled.token_service
    tokens.clear_requests()
    async with client_for(filled) as client:
        await client.prefetch_tokens(REPOSITORIES, "pull,push")
        fetched = tokens.requests
        # 19 repositories in three fetches (8 + 8 + 3), the realm learnt from one anonymous GET /v2/.
        assert sorted(len(r.scopes) for r in fetched) == [3, TOKEN_SCOPES_PER_FETCH, TOKEN_SCOPES_PER_FETCH]
        heads = await asyncio.gather(*(client.head_manifest(n, "v1") for n in REPOSITORIES))
        assert all(h is not None for h in heads)
        # pull is within the pull,push asked for: no request needed a token of its own.
        assert len(tokens.requests) == 3
        await client.prefetch_tokens(REPOSITORIES, "pull")  # all held already
        assert len(tokens.requests) == 3


async def test_a_repository_the_token_service_left_out_gets_a_token_of_its_own(filled) -> None:
    tokens = filled.token_service
    user = filled.username
    async with client_for(filled) as client:
        # The service grants this user team/* only: the batch token lacks other/app.
        tokens.allowed_prefixes[user] = ("team/",)
        await client.prefetch_tokens([REPOSITORIES[0], "other/app"], "pull")
        assert await client.head_manifest(REPOSITORIES[0], "v1") is not None
        tokens.clear_requests()
        with pytest.raises(AuthenticationError):
            await client.head_manifest("other/app", "v1")
        # Refused with the shared token, it asked for the repository alone (and got nothing).
        assert [r.scopes for r in tokens.requests] == [("repository:other/app:pull",)]
        tokens.allowed_prefixes.pop(user)
        assert await client.head_manifest("other/app", "v1") is not None
