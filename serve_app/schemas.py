"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

# No control characters: PostgreSQL cannot store NUL at all (it was a 500),
# and the others only serve to forge log lines or garble terminals.
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: EmailStr = Field(max_length=254)

    @field_validator("email", mode="before")
    @classmethod
    def _length_first(cls, value: Any) -> Any:
        # Checked before EmailStr parses it, so a huge string is rejected
        # cheaply and with a clear reason.
        if isinstance(value, str) and len(value) > 254:
            raise ValueError("email must be at most 254 characters")
        return value


class User(BaseModel):
    id: int
    name: str
    email: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class QuestionResponse(BaseModel):
    question: str
    answer: str
    model: str
    usage: Usage | None = None
    cached: bool = False


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, Any]
