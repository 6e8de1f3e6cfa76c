"""API keys: making them, storing their hashes, and telling who presented one."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import attrs

from sandboxd.config import ApiKey, Config, ConfigError, load_config


def hash_key(key: str) -> str:
    """The stored form of an API key. Keys are 256-bit random tokens, so one SHA-256 suffices."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    """A new random API key."""
    return "sbx_" + secrets.token_urlsafe(32)


def add_key(path: Path, name: str, rate_limit: int | None) -> str:
    """Append a new key's hash to the configuration file; return the key (shown once, stored nowhere)."""
    config = load_config(path if path.exists() else None, {})
    if any(key.name == name for key in config.api_keys):
        raise ConfigError(str(path), [f"api_keys: a key named {name!r} exists already"])
    ApiKey(name=name, sha256="0" * 64, rate_limit=rate_limit)  # validates the name before anything is written
    key = generate_key()
    entry = f'\n[[api_keys]]\nname = "{name}"\nsha256 = "{hash_key(key)}"\n'
    if rate_limit is not None:
        entry += f"rate_limit = {rate_limit}\n"
    with path.open("a") as config_file:
        config_file.write(entry)
    load_config(path, {})  # the file still validates
    return key


@attrs.frozen
class Identity:
    """Who made a request: the key's name (which owns its executions) and its rate limit."""

    name: str
    rate_limit: int


@attrs.frozen
class KeyRing:
    """The API keys the daemon accepts; lookups compare hashes in constant time."""

    keys: tuple[tuple[Identity, bytes], ...]

    @classmethod
    def from_config(cls, config: Config) -> KeyRing:
        """Collect the configured hashes and the development keys."""
        default = config.limits.rate_limit
        stored = [
            (Identity(key.name, key.rate_limit or default), bytes.fromhex(key.sha256))
            for key in config.api_keys
        ]
        dev = [
            (Identity(f"dev-{i}", default), bytes.fromhex(hash_key(key)))
            for i, key in enumerate(config.dev_keys, 1)
        ]
        return cls(tuple(stored + dev))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: str) -> Identity | None:
        """The identity whose key ``presented`` is, or None; every stored key is compared."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for identity, stored in self.keys:
            if hmac.compare_digest(digest, stored):
                found = identity
        return found
