"""Login and bind rules: hashes verify, plain text is refused, an open bind without auth refuses to start, the proxy's
user header is believed only from configured proxies and only for plain user names."""

from __future__ import annotations

import json

import pytest

from app.auth import (PasswordAuth, TrustedHeaderAuth, client_address, hash_password, load_users, require_auth_for_host,
                      valid_username, verify_password)
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
    h = hash_password("pale blue kettle")
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


def test_password_auth_has_no_per_name_lockout_that_others_could_trigger():
    auth = PasswordAuth({"alice": hash_password("right one at last")})
    for _ in range(20):
        assert not auth("alice", "wrong")  # someone else guessing alice's password ...
    assert auth("alice", "right one at last")  # ... does not lock alice out (rate limits are per address: test_login_limits)
    assert not auth("mallory", "right one at last")  # unknown user


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
    assert auth(Req("::ffff:10.2.3.4", {"X-Remote-User": "jane.doe@hospital.org"})) == "jane.doe@hospital.org"
    assert auth(Req("192.168.1.5", {"X-Remote-User": "dr.who"})) is None
    assert auth(Req("not-an-ip", {"X-Remote-User": "dr.who"})) is None
    assert auth(Req("10.2.3.4", {})) is None


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "dr\x00who", "dr\nwho", "a" * 65, "dr who", "Müller",
                                  "../admin", ""])
def test_trusted_header_user_names_outside_letters_digits_and_dot_underscore_at_dash_are_refused(name):
    class Req:
        client = type("C", (), {"host": "127.0.0.1"})()
        headers = {"X-Remote-User": name}

    assert not valid_username(name)
    assert TrustedHeaderAuth("X-Remote-User")(Req()) is None
    assert valid_username("a" * 64) and valid_username("dr.o-neil_2@icu")


def test_client_address_believes_x_forwarded_for_only_from_trusted_proxies():
    proxies = ("127.0.0.1/32", "10.0.0.0/8")
    assert client_address("127.0.0.1", "203.0.113.7", proxies) == "203.0.113.7"
    # a client that forges the header gets its forgery on the left; the proxy appends what it saw
    assert client_address("127.0.0.1", "198.51.100.1, 203.0.113.7", proxies) == "203.0.113.7"
    assert client_address("127.0.0.1", "203.0.113.7:5123, 10.1.1.1", proxies) == "203.0.113.7"
    assert client_address("192.0.2.9", "203.0.113.7", proxies) == "192.0.2.9"  # not a proxy: header ignored
    assert client_address("127.0.0.1", "", proxies) == "127.0.0.1"


def test_trusted_proxies_come_from_the_config_file_or_environment(tmp_path):
    from app.config import load_config

    file = tmp_path / "m3.toml"
    file.write_text('[auth]\ntrusted_header = "X-Remote-User"\ntrusted_proxies = ["10.0.0.0/8", "192.168.1.1"]\n'
                    'state_file = "/var/lib/m3/login.json"\nfailures_before_delay = 3\n')
    config = load_config(file, env={})
    assert config.auth.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert str(config.login_state_file) == "/var/lib/m3/login.json" and config.auth.failures_before_delay == 3
    from_env = load_config(env={"M3_AUTH_TRUSTED_PROXIES": "172.16.0.0/12, ::1"})
    assert from_env.auth.trusted_proxies == ("172.16.0.0/12", "::1")
    assert from_env.login_state_file == from_env.audit.log_path.parent / "login-state.json"
    with pytest.raises(ConfigError, match=r"auth.trusted_proxies must be IP addresses or CIDR networks .*got 'nginx'"):
        load_config(env={"M3_AUTH_TRUSTED_PROXIES": "10.0.0.0/8,nginx"})
    file.write_text("[auth]\ntrusted_proxies = 7\n")
    with pytest.raises(ConfigError, match="auth.trusted_proxies must be a list of text"):
        load_config(file, env={})
    with pytest.raises(ConfigError, match="auth.trusted_proxies must list the reverse proxy that sets auth.trusted_header"):
        load_config(env={"M3_AUTH_TRUSTED_HEADER": "X-Remote-User", "M3_AUTH_TRUSTED_PROXIES": ""})
    with pytest.raises(ConfigError, match="auth.global_failures_per_minute must be >= 1, got 0"):
        load_config(env={"M3_AUTH_GLOBAL_FAILURES_PER_MINUTE": "0"})


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
