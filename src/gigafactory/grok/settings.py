"""Settings of the Grok service: defaults, overridden by ``GROK_*`` environment variables,
overridden by CLI flags. ``GROK_API_KEYS`` is a comma-separated list."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gigafactory.errors import GigafactoryError
from gigafactory.grok.memory.rank import RankWeights


class SettingsError(GigafactoryError, ValueError):
    """A setting has a value the service cannot use."""


class GrokSettings(BaseModel):
    """Everything ``gigafactory serve`` can be told (env var = ``GROK_`` + upper-case name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("grok-data")
    api_keys: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # limits
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_batch: int = Field(20_000, ge=1)
    ingest_rate: float = Field(100_000.0, gt=0, description="posts/s per API key")
    ingest_burst: float = Field(200_000.0, gt=0, description="bucket size, posts")
    query_rate: float = Field(1_000.0, gt=0, description="search/trend requests/s per key")
    query_burst: float = Field(2_000.0, gt=0)
    max_future_s: float = Field(300.0, ge=0, description="allowed clock skew of created_at")
    # durability and indexing
    synchronous: str = Field("FULL", pattern="^(?i)(FULL|NORMAL|EXTRA)$")
    commit_interval_s: float = Field(0.1, gt=0, le=10)
    indexer_threads: int = Field(1, ge=1, le=16)
    indexer_heap_mb: int = Field(256, ge=16)
    max_index_lag_s: float = Field(
        0.2, ge=0, le=60, description="ingest waits while the index is further behind (0: never)"
    )
    max_ingest_hold_s: float = Field(
        2.0, gt=0, le=60, description="the longest one batch waits for the index"
    )
    # ranking (see gigafactory.grok.memory.rank)
    rank_text: float = Field(1.0, ge=0)
    rank_recency: float = Field(0.5, ge=0)
    rank_engagement: float = Field(0.3, ge=0)
    half_life_s: float = Field(6 * 3600.0, gt=0)
    engagement_ref: int = Field(1000, ge=1)
    candidates: int = Field(200, ge=1, le=10_000)
    # trends
    trend_bucket_s: int = Field(60, ge=1)
    trend_retention_s: int = Field(6 * 3600, ge=60)
    trend_save_s: float = Field(5.0, gt=0, le=3600, description="seconds between trend saves")
    # answers (see gigafactory.grok.answers)
    answer_backend: str = Field("offline", pattern="^(offline|checkpoint|remote)$")
    checkpoint: Path | None = Field(None, description="gigafactory train output (backend 2)")
    remote_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    remote_model: str = Field("default", min_length=1, max_length=200)
    remote_key: str | None = None
    remote_timeout_s: float = Field(30.0, gt=0, le=600)
    answer_timeout_s: float = Field(60.0, gt=0, le=3600)
    max_message_chars: int = Field(32_000, ge=100)
    citation_url: str = Field("https://x.com/{author}/status/{id}", pattern=r"\{id\}")

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_given(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a directory path (it is created if missing)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_dir(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory: give a directory path")
        return value

    def prepare_data_dir(self) -> Path:
        """Create ``data_dir`` if missing and check it is a writable directory; raises
        ``SettingsError`` saying what to change."""
        d = self.data_dir
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SettingsError(
                f"setting data_dir (env GROK_DATA_DIR): cannot use {d} as the data directory "
                f"({exc.strerror or exc}); give a writable directory path"
            ) from None
        return d

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @model_validator(mode="after")
    def _backend_configured(self) -> GrokSettings:
        if self.answer_backend == "checkpoint" and self.checkpoint is None:
            raise ValueError(
                "answer_backend checkpoint needs checkpoint (a gigafactory train --out)"
            )
        if self.answer_backend == "remote" and not self.remote_url:
            raise ValueError("answer_backend remote needs remote_url (http://host:port/v1)")
        if self.checkpoint is not None and not self.checkpoint.is_dir():
            raise ValueError(f"checkpoint {self.checkpoint} is not a folder")
        return self

    @property
    def weights(self) -> RankWeights:
        """The ranking weights as the search code takes them."""
        return RankWeights(
            self.rank_text,
            self.rank_recency,
            self.rank_engagement,
            self.half_life_s,
            self.engagement_ref,
            self.candidates,
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> GrokSettings:
        """Defaults < ``GROK_*`` variables of ``env`` (default: os.environ) < ``overrides``
        (``None`` overrides are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = "GROK_" + name.upper()
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            name = ".".join(str(p) for p in e["loc"])
            if not name:  # a rule across settings
                raise SettingsError(str(e["msg"]).removeprefix("Value error, ")) from None
            raise SettingsError(f"setting {name} (env GROK_{name.upper()}): {e['msg']}") from None
