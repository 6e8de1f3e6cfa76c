"""Daemon configuration and API keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.api.app import create_app
from sandboxd.api.auth import KeyRing, generate_key, hash_key
from sandboxd.config import Config, ConfigError, load_config
from sandboxd.engine.host import StartupError


def test_defaults_without_a_file() -> None:
    """No file: documented defaults, loopback on 8002, the sandboxd namespace."""
    config = load_config(None, {})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8002)
    assert config.containerd.namespace == "sandboxd"
    assert config.api_keys == ()


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    """Wrong types, unknown keys and bad values all come at once, each naming its key."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[server]\nport = "80"\n[limits]\nconcurrency = 0\n[runsc]\nbogus = 1\n'
        '[[api_keys]]\nname = "ci"\nsha256 = "nothex"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    problems = caught.value.problems
    assert "server.port: expected an integer" in problems
    assert "limits.concurrency: must be positive, got 0" in problems
    assert "runsc: unknown field: bogus" in problems
    assert any(p.startswith("api_keys[0].sha256: must be 64 lower-case hex digits") for p in problems)


def test_environment_overrides(tmp_path: Path) -> None:
    """SANDBOXD_CONTAINERD_ADDRESS and SANDBOXD_API_KEYS override the file."""
    path = tmp_path / "config.toml"
    path.write_text('[containerd]\naddress = "/a.sock"\n')
    config = load_config(path, {"SANDBOXD_CONTAINERD_ADDRESS": "/b.sock", "SANDBOXD_API_KEYS": "k1, k2,"})
    assert config.containerd.address == "/b.sock"
    assert config.dev_keys == ("k1", "k2")


def test_keys_are_matched_by_hash() -> None:
    """Stored hashes identify their key's name; anything else is refused."""
    key = generate_key()
    config = load_config(None, {"SANDBOXD_API_KEYS": "dev-plain"})
    config = Config(api_keys=(), dev_keys=config.dev_keys)
    ring = KeyRing.from_config(config)
    identity = ring.identify("dev-plain")
    assert identity is not None
    assert (identity.name, identity.rate_limit) == ("dev-1", 600)
    assert ring.identify(key) is None
    assert ring.identify("") is None
    assert len(hash_key(key)) == 64


def test_plain_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    """Keys are stored hashed: a plain-key field in the file is an error."""
    path = tmp_path / "config.toml"
    path.write_text('dev_keys = ["secret"]\n')
    with pytest.raises(ConfigError, match="dev_keys"):
        load_config(path, {})


def test_server_refuses_to_start_without_a_key() -> None:
    """With no key configured the app is not built, and the message says how to add one."""
    with pytest.raises(StartupError, match="sandboxd keys generate"):
        create_app(load_config(None, {}))


def test_every_setting_has_an_environment_variable() -> None:
    """SANDBOXD_<SECTION>_<KEY> overrides each setting; values are converted by the setting's type."""
    config = load_config(
        None,
        {
            "SANDBOXD_SERVER_PORT": "9000",
            "SANDBOXD_LIMITS_RETENTION_HOURS": "1.5",
            "SANDBOXD_PATHS_STATE": "/run/elsewhere",
            "SANDBOXD_HEALTH_ADDRESS": "0.0.0.0:9003",
        },
    )
    assert (config.server.port, config.limits.retention_hours) == (9000, 1.5)
    assert str(config.paths.state) == "/run/elsewhere"
    assert config.health.address == "0.0.0.0:9003"


def test_bad_environment_value_names_setting_and_variable() -> None:
    """A wrong value from the environment is reported with the setting and the variable it came from."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"SANDBOXD_SERVER_PORT": "eighty", "SANDBOXD_HEALTH_ADDRESS": "nowhere"})
    assert "SANDBOXD_SERVER_PORT" in str(caught.value)
    assert caught.value.problems == ["server.port: expected an integer", "health.address: must be host:port"]


def test_store_url() -> None:
    """The store is SQLite unless a postgresql:// URL is given (SANDBOXD_STORE_URL); others are refused."""
    assert load_config(None, {}).store.url == "sqlite:"
    url = "postgresql://sandboxd@db.internal/sandboxd"
    assert load_config(None, {"SANDBOXD_STORE_URL": url}).store.url == url
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"SANDBOXD_STORE_URL": "mysql://db/x"})
    assert caught.value.problems == ["store.url: must start with sqlite: or postgresql://"]
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"SANDBOXD_STORE_LEASE_SECONDS": "0"})
    assert caught.value.problems == ["store.lease_seconds: must be positive, got 0.0"]
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"SANDBOXD_STORE_URL": "sqlite:relative.db"})
    assert caught.value.problems == ["store.url: must be sqlite: or sqlite:///ABSOLUTE/PATH"]


def test_pool_sizes_of_a_runtime_fall_back_to_the_pools(tmp_path: Path) -> None:
    """A batch's worth (10) by default; a runtime's table overrides what it sets, and is checked whole."""
    assert load_config(None, {}).pool.bounds("python") == (0, 10)
    path = tmp_path / "config.toml"
    path.write_text("[pool]\nmax = 6\n[pool.runtimes.python]\nmin = 2\n[pool.runtimes.go]\nmax = 1\n")
    pool = load_config(path, {}).pool
    assert (pool.bounds("python"), pool.bounds("go"), pool.bounds("ruby")) == ((2, 6), (0, 1), (0, 6))
    path.write_text("[pool]\nmax = 3\n[pool.runtimes.python]\nmin = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.problems == ["pool.runtimes.python.max: must be at least min (5), got 3"]
