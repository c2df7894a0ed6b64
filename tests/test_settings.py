"""Configuration: one file plus environment overrides, validated at start with errors naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelworks.errors import ConfigError
from modelworks.settings import load_settings


def test_defaults_serve_the_embedded_models():
    settings = load_settings(None, environ={})
    assert settings.deployments["gemma-3-270m"].backend == "gemma"
    assert settings.backends["gemma"].type == "llama_cpp"
    assert settings.backends["minilm"].type == "minilm"
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8000


def test_yaml_file_and_env_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 9100}\nbackends:\n  up: {type: openai, base_url: 'http://x/v1'}\n"
                    "deployments:\n  m: {backend: up}\n")
    settings = load_settings(path, environ={"MODELWORKS__SERVER__PORT": "9200", "MODELWORKS_API_KEY": "k",
                                            "MODELWORKS__BACKENDS__UP__TIMEOUT_S": "5"})
    assert settings.server.port == 9200
    assert settings.api_key == "k"
    assert settings.backends["up"].timeout_s == 5


def test_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[backends.f]\ntype = "fake"\n[deployments.m]\nbackend = "f"\n')
    assert load_settings(path, environ={}).deployments["m"].backend == "f"


@pytest.mark.parametrize("text,where", [
    ("server: {port: 'eighty'}", "server.port"),
    ("server: {prot: 1}", "server.prot"),
    ("backends: {g: {type: llama_cpp, threads: 0}}\ndeployments: {}", "backends.g.threads"),
    ("backends: {g: {type: llama_cpp, parallel: 16, batch_size: 8}}\ndeployments: {}", "backends.g"),
    ("backends: {g: {type: warp_drive}}\ndeployments: {}", "backends.g"),
    ("backends: {u: {type: openai}}\ndeployments: {}", "backends.u.base_url"),
    ("backends: {}\ndeployments: {m: {backend: nowhere}}", "deployments.m.backend"),
    ("backends: {g: {type: llama_cpp, model: {path: a, package: b}}}\ndeployments: {}", "backends.g.model"),
    ("backends: {f: {type: fake}}\ndeployments: {m: {backend: f, content_filter: nope}}", "deployments.m.content_filter"),
    ("content_filters: {p: {prompt: {hate: {threshold: extreme}}}}", "content_filters.p.prompt.hate.threshold"),
    ("content_filters: {p: {prompt: {pii: {kinds: [shoe_size]}}}}", "content_filters.p.prompt.pii.kinds"),
])
def test_errors_name_the_field(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert where in str(info.value)


def test_unparseable_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="does not parse"):
        load_settings(path, environ={})


def test_cli_reports_bad_config_without_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: -5}")
    result = subprocess.run([sys.executable, "-m", "modelworks", "check-config", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "server.port" in result.stderr and "Traceback" not in result.stderr


def test_create_app_does_no_work_at_import():
    code = ("import sys, modelworks.api.app, modelworks.cli; "
            "print(any(m in sys.modules for m in ('llama_cpp', 'numpy', 'tokenizers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
