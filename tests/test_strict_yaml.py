"""Config and sweep files: duplicate keys, non-YAML and Python tags are refused with the file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroreg.config import ConfigError, RunConfig
from sweep.spec import load_spec

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("text", "says"), [
    ("regularizer:\n  alpha: 1\n  alpha: 4\n", "'alpha' appears twice"),
    ("train: [unclosed\n", "not a valid run config YAML"),
    ("!!python/object/apply:os.system ['touch PWNED']\n", "not a valid run config YAML"),
])
def test_run_config_refused(text, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=says):
        RunConfig.from_yaml(f)
    assert not (tmp_path / "PWNED").exists()


def test_binary_config_refused(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not"):
        RunConfig.from_yaml(f)


def test_sweep_file_with_duplicate_key(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nbase: {}\nspace:\n  regularizer.alpha: {uniform: [0.1, 1]}\n"
                 "  regularizer.alpha: {uniform: [1, 2]}\n")
    with pytest.raises(ConfigError, match="appears twice"):
        load_spec(f)
