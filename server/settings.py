"""Settings: one frozen struct, read once from the environment."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec

from domain.orgs import Organisations, parse_orgs


class Settings(msgspec.Struct, frozen=True):
    database_url: str | None = None
    secrets: tuple[str, ...] = ()
    data_dir: str = ".data"
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 256 * 1024
    token_ttl_seconds: int = 7 * 24 * 3600
    admins: frozenset[str] = frozenset()
    orgs: Organisations = msgspec.field(default_factory=Organisations)
    pool_min: int = 2
    pool_max: int = 20
    idle_in_transaction_ms: int = 10_000
    log_level: str = "info"
    ws_queue_limit: int = 1024
    presence_ttl: float = 30.0
    debug_subscribe_delay: float = 0.0
    ws_deflate: bool = False
    ws_max_subscriptions: int = 100
    ws_max_message_bytes: int = 256 * 1024
    command_rate: float = 20.0
    command_burst: int = 60
    read_rate: float = 50.0
    read_burst: int = 200
    invite_ttl_seconds: int = 14 * 24 * 3600
    log_page_max: int = 10_000
    # read replica (server/replica.py): reads use it only while it is this fresh
    replica_url: str | None = None
    replica_wait_ms: int = 200  # read-your-writes: how long to wait for it, then primary
    replica_max_lag_ms: int = 1000
    # webhooks (server/webhooks.py): retries with exponential backoff and jitter, then parked
    webhook_max_attempts: int = 10
    webhook_backoff: float = 5.0  # seconds before the 2nd attempt; doubles each time
    webhook_backoff_max: float = 1800.0
    webhook_timeout: float = 10.0
    webhook_poll: float = 1.0  # how often the delivery worker looks for due deliveries
    webhook_admins_only: bool = True
    webhook_allow_private: bool = False
    webhook_retention_days: float = 30.0

    @property
    def signing_secret(self) -> str:
        return self.secrets[0]


def _secrets(data_dir: str) -> tuple[str, ...]:
    """MAPSTREAM_SECRET, comma-separated (first signs, all verify); else a local dev secret."""
    raw = os.environ.get("MAPSTREAM_SECRET", "")
    listed = tuple(s.strip() for s in raw.split(",") if s.strip())
    short = [n for n, s in enumerate(listed, 1) if len(s) < 32]
    if short:
        raise SystemExit(
            f"MAPSTREAM_SECRET: secret #{short[0]} is shorter than 32 characters; "
            "use e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if listed:
        return listed
    path = Path(data_dir) / "secret"
    if path.exists():
        return (path.read_text().strip(),)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.write_text(secret)
    path.chmod(0o600)
    return (secret,)


def load_settings(**overrides: object) -> Settings:
    env = os.environ
    data_dir = str(overrides.pop("data_dir", env.get("MAPSTREAM_DATA_DIR", ".data")))
    values: dict[str, object] = {
        "database_url": env.get("DATABASE_URL") or None,
        "data_dir": data_dir,
        "host": env.get("MAPSTREAM_HOST", "127.0.0.1"),
        "port": int(env.get("MAPSTREAM_PORT", env.get("PORT", "8000"))),
        "max_body_bytes": int(env.get("MAPSTREAM_MAX_BODY_BYTES", str(256 * 1024))),
        "token_ttl_seconds": int(env.get("MAPSTREAM_TOKEN_TTL", str(7 * 24 * 3600))),
        "admins": frozenset(
            a.strip().lower() for a in env.get("MAPSTREAM_ADMINS", "").split(",") if a.strip()
        ),
        "orgs": parse_orgs(env.get("MAPSTREAM_ORGS", "")),
        "pool_max": int(env.get("MAPSTREAM_POOL_MAX", "20")),
        "log_level": env.get("MAPSTREAM_LOG_LEVEL", "info"),
        "ws_queue_limit": int(env.get("MAPSTREAM_WS_QUEUE", "1024")),
        "presence_ttl": float(env.get("MAPSTREAM_PRESENCE_TTL", "30")),
        "debug_subscribe_delay": float(env.get("MAPSTREAM_DEBUG_SUBSCRIBE_DELAY", "0")),
        "ws_max_subscriptions": int(env.get("MAPSTREAM_WS_MAX_SUBSCRIPTIONS", "100")),
        "ws_max_message_bytes": int(env.get("MAPSTREAM_WS_MAX_MESSAGE_BYTES", str(256 * 1024))),
        "ws_deflate": env.get("MAPSTREAM_WS_DEFLATE", "0").lower() in ("1", "true", "yes"),
        "command_rate": float(env.get("MAPSTREAM_COMMAND_RATE", "20")),
        "command_burst": int(env.get("MAPSTREAM_COMMAND_BURST", "60")),
        "read_rate": float(env.get("MAPSTREAM_READ_RATE", "50")),
        "read_burst": int(env.get("MAPSTREAM_READ_BURST", "200")),
        "invite_ttl_seconds": int(env.get("MAPSTREAM_INVITE_TTL", str(14 * 24 * 3600))),
        "replica_url": env.get("DATABASE_REPLICA_URL") or None,
        "replica_wait_ms": int(env.get("MAPSTREAM_REPLICA_WAIT_MS", "200")),
        "replica_max_lag_ms": int(env.get("MAPSTREAM_REPLICA_MAX_LAG_MS", "1000")),
        "webhook_max_attempts": int(env.get("MAPSTREAM_WEBHOOK_MAX_ATTEMPTS", "10")),
        "webhook_backoff": float(env.get("MAPSTREAM_WEBHOOK_BACKOFF", "5")),
        "webhook_backoff_max": float(env.get("MAPSTREAM_WEBHOOK_BACKOFF_MAX", "1800")),
        "webhook_timeout": float(env.get("MAPSTREAM_WEBHOOK_TIMEOUT", "10")),
        "webhook_admins_only": env.get("MAPSTREAM_WEBHOOK_ADMINS_ONLY", "1").lower()
        in ("1", "true", "yes"),
        "webhook_allow_private": env.get("MAPSTREAM_WEBHOOK_ALLOW_PRIVATE", "0").lower()
        in ("1", "true", "yes"),
        "webhook_retention_days": float(env.get("MAPSTREAM_WEBHOOK_RETENTION_DAYS", "30")),
    }
    values.update(overrides)
    if "secrets" not in values:
        values["secrets"] = _secrets(data_dir)
    return msgspec.convert(values, type=Settings)
