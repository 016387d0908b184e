"""Settings: the one config source (environment ``DUCTWORK_*``, then ``.env``, then defaults).

Secrets are ``SecretStr``: never printed, logged, fingerprinted or written into artifacts.
"""

from __future__ import annotations

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
        description="Artifact store location (default: <project>/.ductwork).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="Run records database (default: sqlite file records.db in the store).",
    )
    executor: str | None = Field(default=None, description="local (ray, prefect planned).")
    workers: int | None = Field(default=None, ge=1, description="Concurrent stages.")
    pool: str | None = Field(default=None, description="thread | process")
    profile: str | None = Field(
        default=None,
        description="Selects each stage's `profiles:` overrides (e.g. dev, prod).",
    )

    def store_path(self, project_dir: Path) -> Path:
        if self.store:
            p = Path(self.store).expanduser()
            return p if p.is_absolute() else project_dir / p
        return project_dir / ".ductwork"


def load_settings(project_dir: Path | None = None) -> Settings:
    """Settings with ``.env`` read from the project directory."""
    env_file = (project_dir / ".env") if project_dir else Path(".env")
    return Settings(_env_file=env_file if env_file.exists() else None)
