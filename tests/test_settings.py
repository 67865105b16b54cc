"""Settings: the names and defaults of CONTRACT.md, and `python -m bot` refusing bad ones."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import AccessMode, Settings, describe_errors

ROOT = Path(__file__).resolve().parents[1]


def _env_without_settings() -> dict[str, str]:
    names = set(Settings.model_fields) | {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k not in names}


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,  # no .env there
        env={**_env_without_settings(), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=None, bot_token="1:x", smsman_token="k")  # type: ignore[call-arg]
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.smsman_api_url == "https://api.sms-man.com/control"
    assert settings.database_url == "sqlite:///data/bot.sqlite3"
    assert settings.admin_ids == [] and settings.allowed_user_ids == []
    assert settings.access_mode is AccessMode.PRIVATE
    assert settings.currency == "RUB"
    assert settings.markup_percent == 0 and settings.price_step == Decimal("0.01")
    assert settings.max_active_orders == 5
    assert settings.sms_poll_interval == 3 and settings.activation_timeout == 1200
    assert settings.smsman_max_concurrency == 10 and settings.smsman_max_rps == 20
    assert settings.smsman_timeout == 15 and settings.low_balance_alert == 0
    assert settings.log_level == "INFO"


def test_lists_of_ids_and_secret_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_IDS", "1, 22,333")
    monkeypatch.setenv("ALLOWED_USER_IDS", "")
    settings = Settings(_env_file=None, bot_token="1:tokenvalue", smsman_token="k")  # type: ignore[call-arg]
    assert settings.admin_ids == [1, 22, 333] and settings.allowed_user_ids == []
    assert "tokenvalue" not in repr(settings)
    assert "tokenvalue" not in str(settings.model_dump())


def test_one_clear_line_per_problem() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(  # type: ignore[call-arg]
            _env_file=None, bot_token="1:x", smsman_token="k", access_mode="open", currency="XYZ"
        )
    lines = describe_errors(caught.value)
    assert len(lines) == 2
    assert any(line.startswith("ACCESS_MODE is invalid") for line in lines)
    assert any(line.startswith("CURRENCY is invalid") for line in lines)


def test_python_m_bot_without_token_exits_2_with_a_clear_line(tmp_path: Path) -> None:
    result = run_bot(tmp_path, SMSMAN_TOKEN="k")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "BOT_TOKEN is not set: copy .env.example to .env and fill it in"
    )
    assert "Traceback" not in result.stderr


def test_python_m_bot_with_invalid_values_never_echoes_tokens(tmp_path: Path) -> None:
    result = run_bot(
        tmp_path, BOT_TOKEN="1:supersecret", SMSMAN_TOKEN="alsosecret", MAX_ACTIVE_ORDERS="lots"
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("MAX_ACTIVE_ORDERS is invalid")
    assert "supersecret" not in result.stderr + result.stdout
    assert "alsosecret" not in result.stderr + result.stdout


@pytest.mark.parametrize("token", ["not a token", "secret-without-colon", "12ab:xyz", "123:"])
def test_python_m_bot_with_a_malformed_bot_token_exits_2_with_one_line(
    tmp_path: Path, token: str
) -> None:
    """Bot() would raise with a traceback (exit 1); settings refuse it first, quietly."""
    result = run_bot(
        tmp_path,
        BOT_TOKEN=token,
        SMSMAN_TOKEN="k",
        DATABASE_URL=f"sqlite:///{tmp_path / 'bot.sqlite3'}",
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("BOT_TOKEN is invalid"), result.stderr
    assert "Traceback" not in result.stderr
    assert token not in result.stderr.replace("BOT_TOKEN", "") + result.stdout


@pytest.mark.parametrize("name", ["SMSMAN_API_URL", "TELEGRAM_API_URL"])
def test_python_m_bot_refuses_a_token_in_clear_over_the_network(tmp_path: Path, name: str) -> None:
    """http:// would send the token in clear: refused unless the host is this machine."""
    result = run_bot(
        tmp_path,
        BOT_TOKEN="1:supersecret",
        SMSMAN_TOKEN="alsosecret",
        DATABASE_URL=f"sqlite:///{tmp_path / 'bot.sqlite3'}",
        **{name: "http://198.51.100.7:8080/control"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name} is invalid"), result.stderr
    assert "supersecret" not in result.stderr and "alsosecret" not in result.stderr


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8081", "http://localhost:8081/x", "http://[::1]:8081", "https://a.example"],
)
def test_http_is_allowed_on_loopback_only(url: str) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, bot_token="1:x", smsman_token="k", smsman_api_url=url, telegram_api_url=url
    )
    assert settings.smsman_api_url == url


@pytest.mark.parametrize("url", ["http://10.0.0.1", "http://127.0.0.1.example.com", "http://h"])
def test_http_elsewhere_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, bot_token="1:x", smsman_token="k", smsman_api_url=url)  # type: ignore[call-arg]


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, bot_token="1:x", smsman_token="k", **values)  # type: ignore[call-arg]


def test_webhook_settings_defaults_and_rules() -> None:
    settings = _settings()
    assert settings.webhook_url == "" and settings.redis_url == ""
    assert settings.http_host == "127.0.0.1" and settings.http_port is None
    assert not settings.webhook_mode
    assert _settings(http_port="").http_port is None
    good = _settings(
        webhook_url="https://bot.example.com/telegram", webhook_secret="a-Z_9", http_port=8080
    )
    assert good.webhook_mode and good.http_port == 8080
    for bad in (
        {"webhook_url": "http://bot.example.com/telegram", "webhook_secret": "s", "http_port": 1},
        {"webhook_url": "https://bot.example.com/", "webhook_secret": "bad secret", "http_port": 1},
        {"webhook_url": "https://bot.example.com/", "webhook_secret": "x" * 257, "http_port": 1},
        {"webhook_url": "https://bot.example.com/", "http_port": 1},
        {"webhook_url": "https://bot.example.com/", "webhook_secret": "s"},
        {"redis_url": "localhost:6379"},
        {"http_port": "99999"},
    ):
        with pytest.raises(ValidationError):
            _settings(**bad)


def test_webhook_without_secret_and_port_is_two_lines_and_exit_2(tmp_path: Path) -> None:
    result = run_bot(
        tmp_path, BOT_TOKEN="1:x", SMSMAN_TOKEN="k", WEBHOOK_URL="http://example.com/telegram"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "WEBHOOK_URL is invalid: Value error,"
        " must be an https:// URL (Telegram posts only to HTTPS)"
    ]
    result = run_bot(
        tmp_path, BOT_TOKEN="1:x", SMSMAN_TOKEN="k", WEBHOOK_URL="https://example.com/telegram"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "WEBHOOK_SECRET is not set: it is required with WEBHOOK_URL",
        "HTTP_PORT is not set: it is required with WEBHOOK_URL",
    ]
    assert "1:x" not in result.stderr


def test_every_setting_is_in_the_readme_and_env_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert name.upper() in readme, f"{name.upper()} missing from the README's table"
        assert f"{name.upper()}=" in example, f"{name.upper()} missing from .env.example"


def refused_start(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot` with this DATABASE_URL, which it must refuse: exit 2, no traceback."""
    result = run_bot(
        tmp_path,
        BOT_TOKEN="123:secret-token",
        SMSMAN_TOKEN="k",
        DATABASE_URL=database_url,
        TELEGRAM_API_URL="http://127.0.0.1:9",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_a_database_newer_than_the_code_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as conn:  # as a later version of the bot would leave it
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('f00dfeedbeef')")
    result = refused_start(tmp_path, f"sqlite:///{path}")
    assert "schema revision f00dfeedbeef" in result.stderr
    assert "refusing to open it" in result.stderr
    assert "secret-token" not in result.stderr + result.stdout


def test_a_database_out_of_reach_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = refused_start(tmp_path, f"postgresql://postgres:hunter2@127.0.0.1:{port}/test")
    assert "cannot reach the database (DATABASE_URL)" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
