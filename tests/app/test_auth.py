"""Login and bind rules: hashes verify, plain text is refused, an open bind without auth refuses to start."""

from __future__ import annotations

import json

import pytest

from app.auth import PasswordAuth, TrustedHeaderAuth, hash_password, load_users, require_auth_for_host, verify_password
from app.config import ConfigError


def test_scrypt_and_pbkdf2_hashes_verify_only_the_right_password():
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$") and "correct" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    import base64, hashlib

    salt = b"0123456789abcdef"
    key = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)
    pbkdf2 = f"pbkdf2_sha256$1000${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert verify_password("pw", pbkdf2) and not verify_password("pW", pbkdf2)


def test_users_from_toml_json_and_env(tmp_path):
    h = hash_password("pw1")
    toml_file = tmp_path / "users.toml"
    toml_file.write_text(f'[users]\nalice = "{h}"\n')
    json_file = tmp_path / "users.json"
    json_file.write_text(json.dumps({"users": {"bob": h}}))
    assert load_users(toml_file, env={}) == {"alice": h}
    assert load_users(json_file, env={"M3_USERS": f"carol:{h}"}) == {"bob": h, "carol": h}


def test_plain_text_password_in_users_file_is_refused(tmp_path):
    f = tmp_path / "users.toml"
    f.write_text('[users]\nalice = "hunter2"\n')
    with pytest.raises(ConfigError, match="plain-text passwords are refused"):
        load_users(f, env={})


def test_password_auth_locks_a_name_after_repeated_failures():
    auth = PasswordAuth({"alice": hash_password("right")}, max_failures=3, lockout_s=60)
    assert auth("alice", "right")
    for _ in range(3):
        assert not auth("alice", "wrong")
    assert not auth("alice", "right")  # locked now, even with the right password
    assert not auth("mallory", "right")  # unknown user


def test_non_loopback_bind_without_auth_refuses_to_start():
    require_auth_for_host("127.0.0.1", auth_configured=False)
    require_auth_for_host("localhost", auth_configured=False)
    require_auth_for_host("0.0.0.0", auth_configured=True)
    with pytest.raises(ConfigError, match="refusing to listen on '0.0.0.0'"):
        require_auth_for_host("0.0.0.0", auth_configured=False)
    with pytest.raises(ConfigError):
        require_auth_for_host("10.1.2.3", auth_configured=False)


def test_trusted_header_only_believed_from_trusted_proxies():
    class Req:
        def __init__(self, host, headers):
            self.client = type("C", (), {"host": host})()
            self.headers = headers

    auth = TrustedHeaderAuth("X-Remote-User", ("10.0.0.0/8",))
    assert auth(Req("10.2.3.4", {"X-Remote-User": "dr.who"})) == "dr.who"
    assert auth(Req("192.168.1.5", {"X-Remote-User": "dr.who"})) is None
    assert auth(Req("10.2.3.4", {})) is None


def test_m3_serve_on_an_open_address_without_users_refuses_to_start(monkeypatch, capsys):
    from app.main import main

    monkeypatch.delenv("M3_USERS", raising=False)
    monkeypatch.delenv("M3_CONFIG", raising=False)
    monkeypatch.delenv("M3_AUTH_USERS_FILE", raising=False)
    monkeypatch.delenv("M3_AUTH_TRUSTED_HEADER", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "7999"]) == 1
    assert "refusing to listen on '0.0.0.0' without authentication" in capsys.readouterr().err


def test_m3_hash_password_prints_a_hash_that_verifies(monkeypatch, capsys):
    import io

    from app.main import main

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret words\n"))
    assert main(["hash-password", "--user", "alice"]) == 0
    user, encoded = capsys.readouterr().out.strip().split(":", 1)
    assert user == "alice" and verify_password("s3cret words", encoded)
