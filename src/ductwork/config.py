"""Settings: the one config source (environment ``DUCTWORK_*``, then ``.env``, then defaults).

Secrets are ``SecretStr``: never printed, logged, fingerprinted or written into artifacts.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Project settings. Every field can be set as ``DUCTWORK_<NAME>`` or in ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="DUCTWORK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    store: str | None = Field(
        default=None,
        description="Artifact store: a directory (default: <project>/.ductwork) or an object "
        "store URL, s3://bucket/prefix (any fsspec URL; the local directory then keeps the "
        "read cache, scratch space and embedded databases).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint of an s3:// store (MinIO, Ceph...; default AWS)."
    )
    s3_region: str | None = Field(default=None, description="S3 region of an s3:// store.")
    s3_key: SecretStr | None = Field(
        default=None,
        description="S3 access key id (default: the AWS_* variables / boto credential chain).",
    )
    s3_secret: SecretStr | None = Field(default=None, description="S3 secret access key.")
    database_url: SecretStr | None = Field(
        default=None,
        description="Run records database: postgresql://user:password@host:5432/db (runners "
        "on several machines share it), sqlite:///file.db, or unset (records.db in the store).",
    )
    executor: str | None = Field(default=None, description="local | ray | prefect.")
    ray_address: str | None = Field(
        default=None,
        description="executor: ray — the cluster (local, auto, host:port, ray://host:port).",
    )
    workers: int | None = Field(default=None, ge=1, description="Concurrent stages.")
    pool: str | None = Field(default=None, description="thread | process")
    profile: str | None = Field(
        default=None,
        description="Selects each stage's `profiles:` overrides (e.g. dev, prod).",
    )

    def store_url(self) -> str | None:
        """The object store URL when ``store`` is one (``s3://bucket/prefix``), else None."""
        if self.store and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", self.store):
            return self.store
        return None

    def store_path(self, project_dir: Path) -> Path:
        """The local store directory (with an object store: its cache and scratch space)."""
        if self.store and not self.store_url():
            p = Path(self.store).expanduser()
            return p if p.is_absolute() else project_dir / p
        return project_dir / ".ductwork"


def load_settings(project_dir: Path | None = None) -> Settings:
    """Settings with ``.env`` read from the project directory."""
    env_file = (project_dir / ".env") if project_dir else Path(".env")
    return Settings(_env_file=env_file if env_file.exists() else None)
