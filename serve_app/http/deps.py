"""Typed dependencies: what route handlers take instead of reaching into state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve_app.answers import Answers
from serve_app.cache import Cache
from serve_app.errors import DependencyUnavailable, NotFound
from serve_app.http.policy import PRINCIPAL_SCOPE_KEY, Principal
from serve_app.http.resources import Resources
from serve_app.users_repo import UsersRepository


# All async on purpose: FastAPI runs a plain "def" dependency in a thread pool.
async def get_resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_repo(res: ResourcesDep) -> UsersRepository:
    if not res.migrations.done:
        raise DependencyUnavailable("database schema is not ready yet")
    return res.repo


async def get_cache(res: ResourcesDep) -> Cache:
    return res.cache


async def get_answers(res: ResourcesDep) -> Answers:
    if res.answers is None:
        raise NotFound("this deployment serves no model")
    return res.answers


async def get_principal(request: Request) -> Principal:
    # Set by the pipeline (PolicyGate) before the route runs.
    return request.scope[PRINCIPAL_SCOPE_KEY]  # type: ignore[no-any-return]


RepoDep = Annotated[UsersRepository, Depends(get_repo)]
CacheDep = Annotated[Cache, Depends(get_cache)]
AnswersDep = Annotated[Answers, Depends(get_answers)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
