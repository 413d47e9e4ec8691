"""Settings of the review web UI (config key ``review:``). Every key has a default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReviewSettings(_Strict):
    enabled: bool = False
