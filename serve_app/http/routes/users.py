"""Users: created in PostgreSQL, read through the Redis cache."""

# No "from __future__ import annotations": FastAPI must see the real types of
# parameters built from args (caps) when the routes are declared.

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse

from serve_app.config import AppArgs
from serve_app.errors import NotFound
from serve_app.http.deps import CacheDep, PrincipalDep, RepoDep
from serve_app.http.errors import documented
from serve_app.http.policy import Protection
from serve_app.schemas import User, UserCreate

# A user is a name (<= 200 characters) and an email (<= 254): even with every
# character JSON-escaped as a surrogate pair (12 bytes) it fits in 4 KiB;
# twice that leaves room for whitespace.
USERS = Protection("users", body_bytes=8192)
# BIGSERIAL range: larger numbers cannot exist, and would overflow asyncpg.
UserId = Annotated[int, Path(ge=1, le=9_223_372_036_854_775_807)]


def router(args: AppArgs) -> APIRouter:
    ttl = args.cache
    r = APIRouter(
        prefix="/users",
        tags=["users"],
        route_class=USERS.route_class(),
        responses={**USERS.responses(), **documented({422: "invalid input"})},
    )

    @r.post("", response_model=User, responses={**USERS.body_responses(), **documented({409: "email taken"})})
    async def create_user(
        body: UserCreate,
        repo: RepoDep,
        cache: CacheDep,
        principal: PrincipalDep,
        idempotency_key: Annotated[
            str | None,
            Header(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                   description="Retrying with the same key returns the first result instead of a duplicate."),
        ] = None,
    ) -> Any:
        if idempotency_key is None:
            user = await repo.create(body.name, str(body.email))
        else:
            digest = hashlib.sha256(body.model_dump_json().encode()).digest()
            # Keys are scoped per caller: per API key, or per address when
            # the route is open, so one caller never replays another's user.
            user, replayed = await repo.create_idempotent(
                body.name, str(body.email), scope=principal.id, key=idempotency_key, request_hash=digest,
                ttl_s=args.idempotency_ttl_s,
            )
            if replayed:
                return JSONResponse(user, headers={"Idempotent-Replayed": "true"})
        await cache.invalidate_after_create(user["id"])
        return user

    @r.get("", response_model=list[User])
    async def list_users(
        repo: RepoDep,
        cache: CacheDep,
        limit: Annotated[int, Query(ge=1, le=args.users_max_limit)] = args.users_default_limit,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> Any:
        key = await cache.users_list_key(limit, offset)
        return await cache.get_or_load(key, lambda: repo.list(limit, offset), ttl.users_list_ttl_s, name="users_list")

    @r.get("/{user_id}", response_model=User, responses=documented({404: "no such user"}))
    async def get_user(user_id: UserId, repo: RepoDep, cache: CacheDep) -> Any:
        user = await cache.get_or_load(
            cache.user_key(user_id), lambda: repo.get(user_id), ttl.user_ttl_s, cache_none=True, name="user",
            # A create bumps it after its commit: a read racing that create
            # does not cache "missing" for the new id.
            negative_guard=cache.users_generation_key(),
        )
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    return r
