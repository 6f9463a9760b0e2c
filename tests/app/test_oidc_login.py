"""Single sign-on with OpenID Connect against a real provider run in the test (``oidc-provider-mock``): a browser-like
client signs in (authorization code with PKCE, state and nonce), reaches the app and signs out at m3 and at the
provider; a forged state, a sign-in finished in another browser, an ID token meant for another application and a
user outside the allowed groups are refused; idle sessions end; every step is in the audit log; one login method."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from localhost import free_port, serve_in_thread
from oidc_provider import User, run_provider, sign_in_at_provider

from app.audit import AuditLog, verify_audit_log
from app.auth import hash_password
from app.config import AppConfig, ConfigError, load_config

SECRET = "m3-client-secret-for-tests"
USERS = [
    User(sub="u-grey", claims={"preferred_username": "dr.grey", "groups": ["radiology"]}),
    User(sub="u-other-app", claims={"preferred_username": "mallory", "aud": "pacs-viewer", "azp": "m3"}),
    User(sub="u-reader", claims={"upn": "a.smith@hospital.example", "realm_access": {"roles": ["radiologist"]}}),
    User(sub="u-porter", claims={"upn": "b.jones@hospital.example", "realm_access": {"roles": ["porter"]}}),
]


@pytest.fixture(scope="module")
def provider():
    with run_provider(USERS) as running:
        yield running


def _config(tmp_path, issuer: str, **auth) -> AppConfig:
    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    cfg.auth.oidc_issuer, cfg.auth.oidc_client_id, cfg.auth.oidc_client_secret = issuer, "m3", SECRET
    for key, value in auth.items():
        setattr(cfg.auth, key, value)
    return cfg.validate()


def _registry(scripted_module):
    from experts.registry import ExpertRegistry

    registry = ExpertRegistry()
    registry.register("threshold_volume", scripted_module.ThresholdExpert)
    return registry


def _serve(cfg: AppConfig, scripted_module):
    from app.server import serve

    return serve(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module), block=False)


@pytest.fixture(scope="module")
def signed_app(tmp_path_factory, provider, scripted_module):
    """m3 with single sign-on at the provider, default claims (``preferred_username``), no group restriction."""
    cfg = _config(tmp_path_factory.mktemp("oidc"), provider.issuer)
    server = _serve(cfg, scripted_module)
    yield server, cfg
    server.close()


def _events(cfg: AppConfig, name: str) -> list[dict]:
    return [e for e in AuditLog(cfg.audit.log_path).read() if e["event"] == name]


def _provider_page(browser: httpx.Client, url: str) -> httpx.Response:
    """Open the app's page without a session: the browser lands on the provider's sign-in page."""
    page = browser.get(url, follow_redirects=True)
    assert page.status_code == 200 and "Authorize" in page.text, page.text[:300]
    return page


def test_a_clinician_signs_in_at_the_provider_reaches_the_app_and_signs_out_everywhere(signed_app, provider):
    server, cfg = signed_app
    with httpx.Client(timeout=30) as browser:
        assert browser.get(f"{server.url}/config").status_code == 401
        page = _provider_page(browser, f"{server.url}/")
        asked = parse_qs(urlsplit(str(page.url)).query)
        assert asked["redirect_uri"] == [f"{server.url}/oidc/callback"] and asked["client_id"] == ["m3"]
        assert asked["scope"] == ["openid profile email"] and asked["code_challenge_method"] == ["S256"]
        assert asked["state"][0] and asked["nonce"][0]

        app_page = sign_in_at_provider(browser, page, "u-grey")
        assert app_page.status_code == 200 and str(app_page.url) == f"{server.url}/" and "gradio" in app_page.text.lower()
        assert browser.get(f"{server.url}/config").status_code == 200
        assert browser.get(f"{server.url}/gradio_api/user").json() == "dr.grey"

        # PKCE on the wire: the code was exchanged with the verifier whose S256 hash the browser carried
        exchange = provider.params("/oauth2/token")[-1]
        challenge = base64.urlsafe_b64encode(hashlib.sha256(exchange["code_verifier"].encode()).digest()).rstrip(b"=")
        assert challenge.decode() == asked["code_challenge"][0]

        at_provider = browser.get(f"{server.url}/logout", follow_redirects=True)
        assert urlsplit(str(at_provider.url)).path == "/oauth2/end_session"  # the provider's sign-out, with our token
        ended = parse_qs(urlsplit(str(at_provider.url)).query)
        assert ended["post_logout_redirect_uri"] == [f"{server.url}/oidc/signed-out"] and ended["id_token_hint"][0]
        back = browser.post(f"{provider.issuer}/oauth2/end_session/confirm",
                            data={"redirect_uri": ended["post_logout_redirect_uri"][0]}, follow_redirects=True)
        assert back.status_code == 200 and "You are signed out of m3" in back.text
        assert browser.get(f"{server.url}/config").status_code == 401
    assert [(e["user"], e["method"], e["client"]) for e in _events(cfg, "login")] == [("dr.grey", "oidc", "127.0.0.1")]
    assert [(e["user"], e["reason"]) for e in _events(cfg, "logout")] == [("dr.grey", "signed out")]
    assert SECRET not in cfg.audit.log_path.read_text() and verify_audit_log(cfg.audit.log_path).ok


def test_a_callback_whose_state_the_browser_did_not_start_is_refused(signed_app):
    server, cfg = signed_app
    before = len(_events(cfg, "login_failed"))
    with httpx.Client(timeout=30) as browser:
        page = _provider_page(browser, f"{server.url}/")
        callback = browser.post(str(page.url), data={"sub": "u-grey"}).headers["location"]
        code = parse_qs(urlsplit(callback).query)["code"][0]
        forged = browser.get(f"{server.url}/oidc/callback", params={"code": code, "state": "not-the-one-sent"})
        assert forged.status_code == 401 and "Sign-in failed" in forged.text
        assert browser.get(f"{server.url}/config").status_code == 401
    with httpx.Client(timeout=30) as browser:  # the attacker's own sign-in, finished in a victim's browser
        page = _provider_page(browser, f"{server.url}/")
        callback = browser.post(str(page.url), data={"sub": "u-grey"}).headers["location"]
    with httpx.Client(timeout=30) as victim:
        assert victim.get(callback).status_code == 401
        assert victim.get(f"{server.url}/config").status_code == 401
    failed = _events(cfg, "login_failed")[before:]
    assert len(failed) == 2 and all(f["method"] == "oidc" and "MismatchingState" in f["reason"] for f in failed)


def test_an_id_token_issued_for_another_application_is_refused(signed_app):
    server, cfg = signed_app
    with httpx.Client(timeout=30) as browser:
        refused = sign_in_at_provider(browser, _provider_page(browser, f"{server.url}/"), "u-other-app")
        assert refused.status_code == 401 and "could not be verified" in refused.text
        assert browser.get(f"{server.url}/config").status_code == 401
    assert "'aud'" in _events(cfg, "login_failed")[-1]["reason"]
    assert "mallory" not in [e["user"] for e in _events(cfg, "login")]


def test_the_name_claim_and_allowed_groups_from_the_config_file_decide_who_signs_in(tmp_path, provider, scripted_module):
    path = tmp_path / "m3.toml"
    path.write_text(f'[server]\nport = {free_port()}\nroot_path = "/m3"\n[audit]\nlog_path = "{tmp_path / "audit.jsonl"}"\n'
                    f'[auth]\noidc_issuer = "{provider.issuer}"\noidc_client_id = "m3"\noidc_scopes = ["openid", "profile"]\n'
                    'oidc_username_claim = "upn"\noidc_groups_claim = "realm_access.roles"\noidc_allowed_groups = ["radiologist"]\n')
    cfg = load_config(path, env={"M3_OIDC_CLIENT_SECRET": SECRET})
    assert cfg.auth.oidc_client_secret == SECRET
    server = _serve(cfg, scripted_module)
    try:
        with httpx.Client(timeout=30) as browser:
            page = _provider_page(browser, f"{server.url}/m3/")
            asked = parse_qs(urlsplit(str(page.url)).query)
            assert asked["scope"] == ["openid profile"] and asked["redirect_uri"] == [f"{server.url}/m3/oidc/callback"]
            assert sign_in_at_provider(browser, page, "u-reader").status_code == 200
            assert browser.get(f"{server.url}/m3/gradio_api/user").json() == "a.smith@hospital.example"
        with httpx.Client(timeout=30) as browser:
            refused = sign_in_at_provider(browser, _provider_page(browser, f"{server.url}/m3/"), "u-porter")
            assert refused.status_code == 403 and "not in a group allowed to use m3" in refused.text
            assert browser.get(f"{server.url}/m3/config").status_code == 401
    finally:
        server.close()
    assert [e["user"] for e in _events(cfg, "login")] == ["a.smith@hospital.example"]
    [failed] = _events(cfg, "login_failed")
    assert failed["user"] == "b.jones@hospital.example" and failed["reason"] == "not in auth.oidc_allowed_groups"


def test_an_idle_single_sign_on_session_is_signed_out(tmp_path, provider, scripted_module):
    cfg = _config(tmp_path, provider.issuer, idle_logout_min=0.02)  # 1.2 s
    server = _serve(cfg, scripted_module)
    try:
        with httpx.Client(timeout=30) as browser:
            sign_in_at_provider(browser, _provider_page(browser, f"{server.url}/"), "u-grey")
            assert browser.get(f"{server.url}/config").status_code == 200
            time.sleep(1.5)
            assert browser.get(f"{server.url}/config").status_code == 401
            assert "Authorize" in browser.get(f"{server.url}/", follow_redirects=True).text  # back to the provider
    finally:
        server.close()
    assert [(e["user"], e["reason"]) for e in _events(cfg, "logout")] == [("dr.grey", "idle")]


def test_a_provider_that_cannot_be_reached_or_names_another_issuer_gets_no_browser_sent_to_it(tmp_path, scripted_module):
    from fastapi import FastAPI

    discovery = FastAPI()
    discovery.get("/.well-known/openid-configuration")(lambda: {"issuer": "https://elsewhere.example",
                                                               "authorization_endpoint": "https://elsewhere.example/a"})
    fake, port = serve_in_thread(discovery)
    try:
        for issuer, message in ((f"http://127.0.0.1:{free_port()}", "cannot be reached"),
                                (f"http://127.0.0.1:{port}", "describes itself as another issuer")):
            cfg = _config(tmp_path, issuer)
            server = _serve(cfg, scripted_module)
            try:
                answer = httpx.get(f"{server.url}/", follow_redirects=True, timeout=30)
                assert answer.status_code == 502 and message in answer.text and "elsewhere" not in str(answer.url)
            finally:
                server.close()
    finally:
        fake.should_exit = True


# --- settings ------------------------------------------------------------------------------------------------------


def test_the_single_sign_on_example_in_deploy_md_loads_with_the_secret_from_the_environment(tmp_path):
    text = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    [example] = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "oidc_issuer" in b]
    path = tmp_path / "m3.toml"
    path.write_text(example)
    auth = load_config(path, env={"M3_OIDC_CLIENT_SECRET": SECRET}).auth
    assert (auth.oidc_issuer, auth.oidc_client_id, auth.oidc_client_secret) == (
        "https://login.hospital.example/realms/staff", "m3", SECRET)
    assert auth.oidc_scopes == ("openid", "profile", "email") and auth.oidc_allowed_groups == ("radiology",)
    assert (auth.oidc_username_claim, auth.oidc_groups_claim) == ("preferred_username", "groups")
    env = {"M3_AUTH_OIDC_ISSUER": "https://login.example", "M3_AUTH_OIDC_CLIENT_ID": "m3", "M3_OIDC_CLIENT_SECRET": "s",
           "M3_AUTH_OIDC_SCOPES": "openid,profile", "M3_AUTH_OIDC_ALLOWED_GROUPS": "radiology, oncology",
           "M3_AUTH_OIDC_USERNAME_CLAIM": "upn", "M3_AUTH_OIDC_GROUPS_CLAIM": "roles"}
    auth = load_config(env=env).auth  # the same settings as environment variables
    assert auth.oidc_scopes == ("openid", "profile") and auth.oidc_allowed_groups == ("radiology", "oncology")
    assert (auth.oidc_username_claim, auth.oidc_groups_claim) == ("upn", "roles")


@pytest.mark.parametrize(("text", "env", "message"), [
    ('oidc_issuer = "https://login.example"\noidc_client_id = "m3"\noidc_client_secret = "s"\n', {},
     r"auth.oidc_client_secret must not be in the config file; set \$M3_OIDC_CLIENT_SECRET instead"),
    ('oidc_issuer = "https://login.example"\noidc_client_id = "m3"\n', {},
     r"auth.oidc_issuer is set but \$M3_OIDC_CLIENT_SECRET is empty"),
    ('oidc_issuer = "https://login.example"\n', {"M3_OIDC_CLIENT_SECRET": "s"}, r"auth.oidc_client_id is empty"),
    ('oidc_issuer = "login.example"\noidc_client_id = "m3"\n', {"M3_OIDC_CLIENT_SECRET": "s"},
     r"auth.oidc_issuer must be the provider's issuer URL"),
    ('oidc_issuer = "https://login.example"\noidc_client_id = "m3"\noidc_scopes = ["profile"]\n',
     {"M3_OIDC_CLIENT_SECRET": "s"}, r'auth.oidc_scopes must include "openid"'),
    ('oidc_issuer = "https://login.example"\noidc_client_id = "m3"\ntrusted_header = "X-Remote-User"\n',
     {"M3_OIDC_CLIENT_SECRET": "s"}, r"auth.trusted_header and auth.oidc_issuer are both set.*one login method only"),
    ('oidc_issuer = "https://login.example"\noidc_client_id = "m3"\nusers_file = "u.toml"\n',
     {"M3_OIDC_CLIENT_SECRET": "s"}, r"auth.users_file and auth.oidc_issuer are both set"),
])
def test_single_sign_on_settings_that_cannot_work_refuse_start(tmp_path, text, env, message):
    path = tmp_path / "m3.toml"
    path.write_text("[auth]\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)


def test_single_sign_on_counts_as_a_login_for_a_network_bind_but_not_beside_password_users(tmp_path, scripted_module,
                                                                                           monkeypatch):
    from app.server import build_app

    cfg = _config(tmp_path, "https://login.example")
    cfg.server.host = "0.0.0.0"
    api, _, _ = build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    assert {"/oidc/login", "/oidc/callback", "/logout"} <= {getattr(r, "path", "") for r in api.routes}
    monkeypatch.setenv("M3_USERS", f"bob:{hash_password('correct horse battery')}")
    with pytest.raises(ConfigError, match=r"both login methods are configured: auth.oidc_issuer .* and 1 password user"):
        build_app(cfg, backend=scripted_module.ScriptedBackend())
