"""Configuration: the shipped config.toml, precedence, and errors that say what to fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from labpipe.config import Settings, load_settings
from labpipe.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_toml_states_exactly_the_built_in_defaults() -> None:
    from_file = load_settings(ROOT / "config.toml", environ={})
    defaults = Settings()
    assert from_file.as_dict() == defaults.as_dict()
    # every key is present in the file, so it documents all of them; a key unset by default
    # (TOML has no null) is shown commented out
    text = (ROOT / "config.toml").read_text()
    for section, values in defaults.as_dict().items():
        assert f"[{section}]" in text
        for key, value in values.items():
            line = f"\n{key} = " if value is not None else f"\n# {key} = "
            assert line in text, f"{section}.{key} is missing from config.toml"


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[classifier]\nthreshold = 0.7\n[storage]\nroot = "/srv/lab"\n')
    env = {"LABPIPE_CLASSIFIER_THRESHOLD": "0.8", "LABPIPE_DETECTOR_SPLIT_TOUCHING": "false"}
    settings = load_settings(cfg, environ=env)
    assert settings.classifier.threshold == 0.8
    assert settings.detector.split_touching is False
    assert settings.storage.root == Path("/srv/lab")
    assert settings.database_url == "sqlite:////srv/lab/labpipe.sqlite"
    flags = load_settings(cfg, overrides={"classifier.threshold": 0.9, "database.url": None}, environ=env)
    assert flags.classifier.threshold == 0.9


def test_labpipe_config_variable_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "other.toml"
    cfg.write_text("[imaging]\noverview_max_side = 2048\n")
    settings = load_settings(environ={"LABPIPE_CONFIG": str(cfg)})
    assert settings.imaging.overview_max_side == 2048 and settings.source == str(cfg)


def test_unknown_key_error_names_the_file_and_lists_valid_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.toml"
    cfg.write_text("[classifier]\nthreshhold = 0.7\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert str(cfg) in info.value.message and "threshold" in info.value.message


def test_bad_value_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="LABPIPE_CLASSIFIER_BATCH_SIZE"):
        load_settings(environ={"LABPIPE_CLASSIFIER_BATCH_SIZE": "many"})


def test_broken_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[storage\nroot = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg, environ={})


def test_relative_storage_folders_live_under_the_root() -> None:
    settings = load_settings(
        overrides={"storage.root": "/data/lp", "storage.crops": "/fast/crops"}, environ={}
    )
    assert settings.storage.inbox_dir == Path("/data/lp/inbox")
    assert settings.storage.crops_dir == Path("/fast/crops")
    assert dataclasses.asdict(settings.storage)["quarantine"] == Path("quarantine")
