"""Settings: production refuses placeholders and missing values (naming the variable), and
`.env.example` documents every field with a comment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
REAL = "k3J9x-7QpL2mZ8vR4tW1yB6nC0dF5gH"  # long, random-looking, no placeholder marker


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "database_url": "postgresql://app@db.internal:5432/app",
        "jwt_secret": REAL + "jwt",
        "encryption_key": REAL + "enc",
        "cors_origins": ["https://app.example.org"],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _no_outside_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's environment must not decide these tests.
    for name in list(os.environ):
        if name.upper() in {f.upper() for f in Settings.model_fields}:
            monkeypatch.delenv(name)


def test_a_complete_production_config_is_accepted() -> None:
    settings = production()
    assert settings.is_production and settings.json_logs


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"database_url": None}, "DATABASE_URL"),
        ({"jwt_secret": "dev-only-insecure-jwt-secret-change-me-0123456789"}, "JWT_SECRET"),
        ({"jwt_secret": "short"}, "JWT_SECRET"),
        ({"encryption_key": "change-me-please-change-me"}, "ENCRYPTION_KEY"),
        ({"identity_provider": "supabase"}, "SUPABASE_URL"),
        (
            {"identity_provider": "supabase", "supabase_url": "https://x.supabase.co"},
            "SUPABASE_SERVICE_ROLE_KEY",
        ),
        (
            {
                "identity_provider": "supabase",
                "supabase_url": "https://x.supabase.co",
                "supabase_service_role_key": REAL + "srv",
            },
            "SUPABASE_ANON_KEY",
        ),
        ({"billing_provider": "litellm"}, "LITELLM_BASE_URL"),
        (
            {"billing_provider": "litellm", "litellm_base_url": "http://litellm:4000"},
            "LITELLM_MASTER_KEY",
        ),
        (
            {
                "billing_provider": "litellm",
                "litellm_base_url": "http://litellm:4000",
                "litellm_master_key": "sk-change-me",
            },
            "LITELLM_MASTER_KEY",
        ),
        ({"agent_provider": "letta"}, "LETTA_BASE_URL"),
        ({"llm_api_key": "sk-your-key-placeholder"}, "LLM_API_KEY"),
        ({"cors_origins": ["*"]}, "CORS_ORIGINS"),
    ],
)
def test_production_refuses_missing_or_placeholder_values(
    overrides: dict[str, Any], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        production(**overrides)
    assert variable in str(info.value)


def test_production_refuses_the_default_cors_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"environment": "production", "database_url": "postgresql://app@db/app"}
    values |= {"jwt_secret": REAL + "jwt", "encryption_key": REAL + "enc"}
    with pytest.raises(ConfigError, match="CORS_ORIGINS is required in production"):
        Settings(_env_file=None, **values)  # type: ignore[call-arg]
    monkeypatch.setenv("CORS_ORIGINS", "")
    with pytest.raises(ConfigError, match="CORS_ORIGINS is required in production"):
        Settings(_env_file=None, **values)  # type: ignore[call-arg]
    # Set in the environment counts as explicit, even to the development values.
    monkeypatch.setenv("CORS_ORIGINS", "http://localhost:5173")
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    assert settings.cors_origins == ["http://localhost:5173"]


def test_development_accepts_the_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "development"
    assert not settings.json_logs
    assert settings.cors_origins == ["http://localhost:3000", "http://localhost:5173"]


def test_cors_origins_read_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example.org, https://b.example.org/")
    assert Settings(_env_file=None).cors_origins == [  # type: ignore[call-arg]
        "https://a.example.org",
        "https://b.example.org",
    ]
    monkeypatch.setenv("CORS_ORIGINS", '["https://c.example.org"]')
    assert Settings(_env_file=None).cors_origins == ["https://c.example.org"]  # type: ignore[call-arg]


_VAR_LINE = re.compile(r"^#?\s?([A-Z][A-Z0-9_]*)=")


def _documented_variables() -> dict[str, str]:
    """Each variable in .env.example (set or commented out) with the comment right above it."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        match = _VAR_LINE.match(line)
        if not match:
            continue
        j = i - 1
        # Skip sibling variable lines of the same group to reach the description.
        while j >= 0 and _VAR_LINE.match(lines[j]):
            j -= 1
        comment = lines[j] if j >= 0 else ""
        found[match.group(1)] = comment if comment.startswith("#") else ""
    return found


def test_env_example_documents_every_setting_with_a_comment() -> None:
    documented = _documented_variables()
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(fields - documented.keys()) == [], "add these to .env.example"
    assert sorted(documented.keys() - fields) == [], "not settings any more"
    undocumented = [name for name, comment in documented.items() if len(comment) < 6]
    assert undocumented == []


def test_env_example_loads_in_development_and_is_refused_in_production() -> None:
    settings = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    assert settings.environment == "development"
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings(_env_file=ENV_EXAMPLE, environment="production")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings(  # type: ignore[call-arg]
            _env_file=ENV_EXAMPLE, environment="production", database_url="postgresql://x/y"
        )


def _start_server(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m app` with exactly this environment, from a folder with no .env."""
    return subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_server_refuses_to_start_in_production_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in {"DATABASE_URL", "JWT_SECRET"}}
    env.update({"ENVIRONMENT": "production", "PORT": "9"})
    result = _start_server(env, tmp_path)
    assert result.returncode != 0
    assert "DATABASE_URL is required in production" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_server_refuses_to_start_in_production_without_cors_origins(tmp_path: Path) -> None:
    # None of the developer's settings (a CORS_ORIGINS among them) may reach the server.
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(
        {
            "ENVIRONMENT": "production",
            "PORT": "9",
            "DATABASE_URL": "postgresql://app@127.0.0.1:9/app",
            "JWT_SECRET": REAL + "jwt",
            "ENCRYPTION_KEY": REAL + "enc",
        }
    )
    result = _start_server(env, tmp_path)
    assert result.returncode != 0
    assert "CORS_ORIGINS is required in production" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_default_to_the_cpus_only_when_several_are_correct() -> None:
    from app.__main__ import check_workers

    cpus = len(os.sched_getaffinity(0))
    assert Settings(_env_file=None).worker_count == 1  # type: ignore[call-arg]
    assert production().worker_count == 1  # no REDIS_URL: counts in one process only
    assert production(redis_url="redis://cache:6379/0").worker_count == cpus
    assert check_workers(production(redis_url="redis://cache:6379/0", workers=3)) == 3
    assert check_workers(production(workers=1)) == 1


def test_several_workers_require_redis_and_a_database_url() -> None:
    from app.__main__ import check_workers

    with pytest.raises(ConfigError, match="WORKERS > 1 requires REDIS_URL"):
        check_workers(production(workers=2))
    no_database = Settings(_env_file=None, workers=2, redis_url="redis://cache:6379/0")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="WORKERS > 1 requires DATABASE_URL"):
        check_workers(no_database)


def test_each_worker_has_its_own_stable_instance_name() -> None:
    assert production(instance_id="api").instance_name == "api"
    assert production(instance_id="api", worker_index=0).instance_name == "api#0"
    assert production(port=8000, worker_index=3).instance_name.endswith(":8000#3")


def test_the_server_refuses_several_workers_without_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update({"PORT": "9", "WORKERS": "2", "DATABASE_URL": "postgresql://app@127.0.0.1:9/app"})
    result = _start_server(env, tmp_path)
    assert result.returncode != 0
    assert "WORKERS > 1 requires REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr
