"""Configuration: parsers, defaults, the .env file, and one clear line for every bad value."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from llmproxy.settings import (
    Settings,
    SettingsError,
    describe,
    load_settings,
    loki_push_url,
    parse_bool,
    parse_duration,
    parse_host_list,
    parse_size,
    redact_url,
)

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))


@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("5s", 5.0), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5),
    ("2m", 120.0), ("0", 0.0), ("1h2m3s", 3723.0), (" 10s ", 10.0),
])
def test_durations_are_parsed(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "", "s", "5", "-1s", "5 s", "1m 30s", "ms5", "1.s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="250ms, 5s or 1m30s"):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("262144", 262144), ("256KiB", 262144), ("64MiB", 64 * 1024**2), ("1GiB", 1024**3),
    ("1MB", 1_000_000), ("10kb", 10_000), ("0", 0), ("12B", 12),
])
def test_sizes_are_parsed(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5MiB", "64M", "-1", "lots", "MiB"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="256KiB or 64MiB"):
        parse_size(text)


@pytest.mark.parametrize("text, value", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    ("false", False), ("0", False), ("no", False), ("No", False),
])
def test_booleans_are_parsed(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "2", "enabled", "y"])
def test_bad_booleans_are_refused(text):
    with pytest.raises(ValueError, match="true/false"):
        parse_bool(text)


def test_host_lists_accept_names_wildcards_and_ipv6():
    assert parse_host_list("api.anthropic.com, *.Example.com,[::1],*") == (
        "api.anthropic.com", "*.example.com", "::1", "*")
    with pytest.raises(ValueError):
        parse_host_list("http://evil/")


def test_defaults_match_the_product_table(tmp_path):
    settings = load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)})
    assert (settings.host, settings.port, settings.threads) == ("127.0.0.1", 8080, 128)
    assert settings.workers == min(8, max(2, 2 * len(os.sched_getaffinity(0))))
    assert settings.upstream_connect_timeout == 10 and settings.upstream_read_timeout == 600
    assert "api.anthropic.com" in settings.allowed_upstreams and "::1" in settings.allowed_upstreams
    assert "@" in settings.machine_id
    loki = settings.loki
    assert (loki.enabled, loki.batch_size, loki.batch_bytes, loki.batch_wait) == (False, 1000, 1024**2, 5.0)
    assert (loki.retry_max, loki.use_gzip, loki.environment) == (5, True, "development")
    assert (loki.buffer_size, loki.buffer_bytes, loki.shutdown_timeout) == (10_000, 64 * 1024**2, 30.0)
    assert loki.spool_dir == tmp_path / ".loki-spool"
    assert Settings().log_dir == Path("~/.llm-provider-logs").expanduser()


def test_settings_are_immutable(tmp_path):
    settings = load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)})
    with pytest.raises(AttributeError):
        settings.port = 1


def test_env_file_is_read_and_real_environment_wins(tmp_path):
    env_file = tmp_path / "proxy.env"
    env_file.write_text("LLM_PROXY_PORT=9001\nLLM_PROXY_THREADS=4\n# comment\nLLM_PROXY_LOKI_ENVIRONMENT=staging\n")
    settings = load_settings({
        "LLM_PROXY_ENV_FILE": str(env_file),
        "LLM_PROXY_LOG_DIR": str(tmp_path),
        "LLM_PROXY_THREADS": "16",
    })
    assert settings.port == 9001
    assert settings.threads == 16
    assert settings.loki.environment == "staging"


def test_loki_push_url_is_completed_only_when_bare():
    assert loki_push_url("http://loki:3100") == "http://loki:3100/loki/api/v1/push"
    assert loki_push_url("http://loki:3100/") == "http://loki:3100/loki/api/v1/push"
    assert loki_push_url("https://gw.example/custom/push") == "https://gw.example/custom/push"


def test_check_config_masks_secrets_and_url_credentials(tmp_path):
    settings = load_settings({
        "LLM_PROXY_LOG_DIR": str(tmp_path),
        "LLM_PROXY_LOKI_ENABLED": "true",
        "LLM_PROXY_LOKI_URL": "https://12345:glc_secretpassword@logs.example.net",
        "LLM_PROXY_LOKI_AUTH_TOKEN": "tok-0123456789abcdefWXYZ",
        "LLM_PROXY_LOKI_PASSWORD": "short",
    })
    text = "\n".join(f"{k}={v}" for k, v in describe(settings))
    assert "glc_secretpassword" not in text and "12345:" not in text
    assert "tok-0123456789abcdef" not in text and "...WXYZ" in text
    assert "short" not in text
    assert "https://***@logs.example.net/loki/api/v1/push" in text
    assert redact_url("http://loki:3100") == "http://loki:3100"


BAD_INPUT = [
    ({"LLM_PROXY_PORT": "http"}, "LLM_PROXY_PORT='http' is not valid: a whole number from 1 to 65535"),
    ({"LLM_PROXY_PORT": "70000"}, "LLM_PROXY_PORT='70000' is not valid: a whole number from 1 to 65535"),
    ({"LLM_PROXY_PORT": "0"}, "LLM_PROXY_PORT='0' is not valid: a whole number from 1 to 65535"),
    ({"LLM_PROXY_LOKI_BATCH_WAIT": "5x"},
     "LLM_PROXY_LOKI_BATCH_WAIT='5x' is not valid: a duration such as 250ms, 5s or 1m30s"),
    ({"LLM_PROXY_LOKI_URL": "localhost:3100"},
     "LLM_PROXY_LOKI_URL='localhost:3100' is not valid: an http:// or https:// URL such as http://localhost:3100"),
    ({"LLM_PROXY_LOKI_ENABLED": "true"},
     "LLM_PROXY_LOKI_URL='' is not valid: a URL is required when LLM_PROXY_LOKI_ENABLED is true"),
    ({"LLM_PROXY_LOKI_ENABLED": "maybe"},
     "LLM_PROXY_LOKI_ENABLED='maybe' is not valid: one of true/false, 1/0, yes/no"),
    ({"LLM_PROXY_LOKI_BUFFER_BYTES": "64M"},
     "LLM_PROXY_LOKI_BUFFER_BYTES='64M' is not valid: a size in bytes such as 262144, 256KiB or 64MiB"),
    ({"LLM_PROXY_WORKERS": "-2"}, "LLM_PROXY_WORKERS='-2' is not valid: a whole number from 1 to 64"),
    ({"LLM_PROXY_UPSTREAM_READ_TIMEOUT": "0"},
     "LLM_PROXY_UPSTREAM_READ_TIMEOUT='0' is not valid: a duration greater than zero"),
    ({"LLM_PROXY_ALLOWED_UPSTREAMS": "https://api.openai.com/"},
     "LLM_PROXY_ALLOWED_UPSTREAMS='https://api.openai.com/' is not valid: comma-separated host names"),
    ({"LLM_PROXY_BEDROCK_REGION": "Virginia"},
     "LLM_PROXY_BEDROCK_REGION='Virginia' is not valid: an AWS region such as us-east-1"),
]


@pytest.mark.parametrize("env, message", BAD_INPUT)
def test_bad_settings_raise_one_line_naming_variable_value_and_accepted(tmp_path, env, message):
    with pytest.raises(SettingsError) as info:
        load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path), **env})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_bad_secret_is_named_masked():
    token = "my explorer password"   # a space: refused, and never shown
    with pytest.raises(SettingsError) as info:
        load_settings({"LLM_PROXY_EXPLORER_TOKEN": token}, create_dirs=False)
    assert str(info.value).startswith("LLM_PROXY_EXPLORER_TOKEN='...' is not valid: at least 16 printable")
    assert "password" not in str(info.value)


def _clean_env(env):
    """The test's environment (coverage's settings included) without any LLM_PROXY_ variable."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LLM_PROXY_")}, **env}


def _run(args, env, cwd):
    return subprocess.run([LLM_PROXY, *args], env=_clean_env(env),
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize("env, message", BAD_INPUT[:6])
def test_bad_settings_stop_startup_with_exit_2_and_no_traceback(tmp_path, command, env, message):
    port_env = {"LLM_PROXY_PORT": "1"} if "LLM_PROXY_PORT" not in env else {}
    result = _run([command], {"LLM_PROXY_LOG_DIR": str(tmp_path / "logs"), **port_env, **env}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"llm-proxy: {message}")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_log_dir_that_cannot_be_created_stops_startup(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run(["serve"], {"LLM_PROXY_LOG_DIR": str(blocker / "logs")}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"llm-proxy: LLM_PROXY_LOG_DIR='{blocker / 'logs'}' is not valid: "
                                    "a directory that can be created and written")
    assert result.stderr.count("\n") == 1


def test_check_config_prints_effective_values(tmp_path):
    result = _run(["check-config"], {"LLM_PROXY_LOG_DIR": str(tmp_path), "LLM_PROXY_PORT": "9999",
                                     "LLM_PROXY_LOKI_PASSWORD": "hunter2-hunter2-hunter2"}, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("LLM_PROXY_"))
    assert lines["LLM_PROXY_PORT"] == "9999"
    assert lines["LLM_PROXY_LOG_DIR"] == str(tmp_path)
    assert "hunter2" not in result.stdout
    assert result.stdout.rstrip().endswith(", not present)")


def test_env_prints_export_lines_that_eval_in_a_shell(tmp_path):
    """With --force, whether or not the proxy answers (tests/test_status.py: without it)."""
    env = {"LLM_PROXY_PORT": "8765", "LLM_PROXY_LOG_DIR": str(tmp_path / "never-created")}
    result = _run(["env", "--force"], env, tmp_path)
    assert result.stdout.splitlines() == [
        "export ANTHROPIC_BASE_URL=http://127.0.0.1:8765/anthropic/api.anthropic.com",
        "export OPENAI_BASE_URL=http://127.0.0.1:8765/openai/api.openai.com/v1",
        "export GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8765/gemini/generativelanguage.googleapis.com",
        "# Codex CLI: llm-proxy env --codex (it ignores OPENAI_BASE_URL)",
    ]
    line = f'eval "$({LLM_PROXY} env --force)"; echo "$ANTHROPIC_BASE_URL $OPENAI_BASE_URL"'
    shell = subprocess.run(["bash", "-c", line],
                           env=_clean_env(env), capture_output=True, text=True, timeout=60)
    assert shell.stdout.split() == ["http://127.0.0.1:8765/anthropic/api.anthropic.com",
                                    "http://127.0.0.1:8765/openai/api.openai.com/v1"]
    assert not (tmp_path / "never-created").exists()


def test_env_codex_prints_config_toml_for_both_ways_of_signing_in(tmp_path):
    # The real Codex CLI runs this very text in tests/test_real_clients.py.
    result = _run(["env", "--codex", "--force"], {"LLM_PROXY_HOST": "::", "LLM_PROXY_PORT": "8765"}, tmp_path)
    config = tomllib.loads(result.stdout)
    url = "http://[::1]:8765/openai/api.openai.com/v1"
    assert config == {"openai_base_url": url, "model_providers": {"llm-proxy": {
        "name": "OpenAI through llm-proxy", "base_url": url, "env_key": "OPENAI_API_KEY", "wire_api": "responses"}}}
    chosen = tomllib.loads(result.stdout.replace('# model_provider = "llm-proxy"', 'model_provider = "llm-proxy"'))
    assert chosen["model_provider"] == "llm-proxy"


def _no_aws(tmp_path, **more):
    """An environment where botocore's credential chain finds nothing (no keys, no files, no
    instance metadata), plus ``more``."""
    env = {k: "" for k in os.environ if k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"), AWS_EC2_METADATA_DISABLED="true",
               LLM_PROXY_LOG_DIR=str(tmp_path / "logs"), LLM_PROXY_PORT="1")
    return {**env, **more}


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize("bedrock, message", [
    ({"LLM_PROXY_BEDROCK_REGION": "eu-west-1"},
     "llm-proxy: the proxy has no AWS credentials to sign Bedrock calls with: none found in the AWS credential chain"),
    ({"LLM_PROXY_BEDROCK_PROFILE": "team"},
     "llm-proxy: the AWS profile 'team' is not in ~/.aws/config or ~/.aws/credentials"),
])
def test_bedrock_configured_without_credentials_stops_startup(tmp_path, command, bedrock, message):
    result = _run([command], _no_aws(tmp_path, **bedrock), tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and result.stdout == ""


def test_bedrock_credentials_from_a_profile_pass_the_check_and_never_show(tmp_path):
    secret = "R3alCl1entProfileSecret0000000000000000"
    (tmp_path / "credentials").write_text(f"[team]\naws_access_key_id = AKIAR3ALCL1ENTPROF01\n"
                                          f"aws_secret_access_key = {secret}\n")
    env = _no_aws(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
                  LLM_PROXY_BEDROCK_PROFILE="team", LLM_PROXY_BEDROCK_REGION="eu-west-1")
    result = _run(["check-config"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("LLM_PROXY_"))
    assert (lines["LLM_PROXY_BEDROCK_REGION"], lines["LLM_PROXY_BEDROCK_PROFILE"]) == ("eu-west-1", "team")
    assert secret not in result.stdout + result.stderr and "AKIA" not in result.stdout + result.stderr


def test_bedrock_not_configured_needs_no_credentials_at_startup(tmp_path):
    result = _run(["check-config"], _no_aws(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
