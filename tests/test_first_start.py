"""A lab's first start: the API token is made for them, serve takes --host/--port, the demo says
where its real cut-outs come from."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from labpipe.api_token import ensure_api_token, load_or_create_token, token_file, web_url
from labpipe.cli.main import cli
from labpipe.config import Settings
from labpipe.daemon.service import settings_environment


@pytest.fixture
def clean_env(tmp_path, monkeypatch) -> Path:
    """No LABPIPE_* variables and no config.toml in the working directory."""
    for name in [k for k in os.environ if k.startswith("LABPIPE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_token_file_is_created_once_owner_only_and_reused(tmp_path):
    path = tmp_path / "state" / "api-token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    again, created_again = load_or_create_token(path)
    assert (again, created_again) == (token, False)
    assert [p.name for p in path.parent.iterdir()] == ["api-token"]  # no temporary file left


def test_processes_starting_together_end_up_with_one_token(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "state" / "api-token"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: load_or_create_token(path), range(16)))
    assert len({token for token, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert path.read_text().strip() == results[0][0]


def test_a_stored_token_readable_by_others_is_tightened(tmp_path):
    path = tmp_path / "api-token"
    path.write_text("lab-token\n")
    path.chmod(0o644)
    assert load_or_create_token(path) == ("lab-token", False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_empty_token_file_is_replaced(tmp_path):
    path = tmp_path / "api-token"
    path.write_text("")
    token, created = load_or_create_token(path)
    assert created and token and path.read_text().strip() == token


def test_settings_get_the_stored_token_and_pass_it_to_children(tmp_path):
    settings = Settings()
    settings.storage.root = tmp_path / "data"
    first = ensure_api_token(settings)
    assert first.created and first.path == token_file(settings) == tmp_path / "data" / "state" / "api-token"
    assert settings.api.token == first.token
    assert settings_environment(settings)["LABPIPE_API_TOKEN"] == first.token
    later = Settings()
    later.storage.root = tmp_path / "data"
    second = ensure_api_token(later)
    assert (second.token, second.created) == (first.token, False)


def test_a_configured_token_wins_and_nothing_is_written(tmp_path):
    settings = Settings()
    settings.storage.root = tmp_path / "data"
    settings.api.token = "from-config"
    result = ensure_api_token(settings)
    assert (result.token, result.path, result.created) == ("from-config", None, False)
    assert settings.api.token == "from-config"
    assert not (tmp_path / "data").exists()


def test_web_url_for_every_host():
    assert web_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert web_url("0.0.0.0", 9000) == "http://127.0.0.1:9000/"
    assert web_url("::1", 8000) == "http://[::1]:8000/"


class _FakeSupervisor:
    seen: ClassVar[list[Any]] = []

    def __init__(self, settings: Any, workers: int, api: bool) -> None:
        self.seen.append((settings, workers, api))

    def run(self) -> int:
        return 0


def _serve(args: list[str], monkeypatch, env: dict[str, str] | None = None) -> tuple[Any, str]:
    import labpipe.daemon.service as service

    _FakeSupervisor.seen = []
    monkeypatch.setattr(service, "Supervisor", _FakeSupervisor)
    result = CliRunner().invoke(cli, ["--data-dir", "data", "serve", *args], env=env)
    assert result.exit_code == 0, result.output
    ((settings, _, _),) = _FakeSupervisor.seen
    return settings, result.output


def test_serve_makes_a_token_on_first_start_and_prints_how_to_log_in(clean_env, monkeypatch):
    settings, output = _serve(["--host", "127.0.0.2", "--port", "8123"], monkeypatch)
    path = clean_env / "data" / "state" / "api-token"
    token = path.read_text().strip()
    assert settings.api.token == token
    assert (settings.api.host, settings.api.port) == ("127.0.0.2", 8123)
    env = settings_environment(settings)
    assert (env["LABPIPE_API_TOKEN"], env["LABPIPE_API_HOST"], env["LABPIPE_API_PORT"]) == (
        token,
        "127.0.0.2",
        "8123",
    )
    assert "http://127.0.0.2:8123/" in output
    assert f"token: {token}" in output and str(path) in output and "generated now" in output

    settings, output = _serve([], monkeypatch)  # a later start: the same token, the default port
    assert settings.api.token == token and "generated now" not in output
    assert "http://127.0.0.1:8000/" in output


def test_serve_keeps_a_token_set_in_the_environment(clean_env, monkeypatch):
    settings, output = _serve([], monkeypatch, env={"LABPIPE_API_TOKEN": "the-labs-own"})
    assert settings.api.token == "the-labs-own"
    assert not (clean_env / "data" / "state" / "api-token").exists()
    assert "the-labs-own" not in output and "[api] token" in output


def test_api_uses_the_stored_token_and_its_host_and_port(clean_env, monkeypatch):
    import uvicorn

    import labpipe.web

    seen: dict[str, Any] = {}
    monkeypatch.setattr(labpipe.web, "create_web_app", lambda settings: seen.setdefault("settings", settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: seen.update(host=host, port=port))
    result = CliRunner().invoke(cli, ["--data-dir", "data", "api", "--port", "8124"])
    assert result.exit_code == 0, result.output
    token = (clean_env / "data" / "state" / "api-token").read_text().strip()
    assert seen["settings"].api.token == token
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8124)
    assert "http://127.0.0.1:8124/" in result.output and token in result.output


def test_demo_says_why_it_has_no_real_cutouts(clean_env, monkeypatch):
    monkeypatch.setenv("LABPIPE_SHARED_DATA", str(clean_env / "nowhere"))
    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "--out",
            "d",
            "--size",
            "1500",
            "--specimens",
            "3",
            "--touching-pairs",
            "0",
            "--debris",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "real cut-outs: none" in result.output
    assert str(clean_env / "nowhere" / "carabidae-crops") in result.output
    assert "LABPIPE_SHARED_DATA" in result.output and "--real-cutouts" in result.output


def test_demo_finds_the_shared_cutouts_from_any_folder(clean_env, monkeypatch, shared_data: Path):
    elsewhere = clean_env / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # ../shared/data is not here
    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "--out",
            "d",
            "--size",
            "1500",
            "--specimens",
            "4",
            "--touching-pairs",
            "0",
            "--debris",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("real cut-outs:"))
    assert "carabidae-crops" in line and not line.startswith("real cut-outs: none")
    assert int(line.split()[2]) > 0


def test_demo_refuses_a_real_cutouts_folder_that_is_not_there(clean_env):
    result = CliRunner().invoke(cli, ["demo", "--out", "d", "--real-cutouts", "missing"])
    assert result.exit_code == 2 and "missing is not a folder" in result.output
