"""Sign-in that resists spraying and spoofing, over HTTP as an attacker would try it: many names from one
address are slowed then refused; failing for a colleague's name does not lock the colleague out; the
counters survive a restart; the proxy's user header is believed only from configured proxies; every route
but the page, /login, static assets and /healthz answers 401 without a session.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from starlette.routing import Mount
from starlette.testclient import TestClient

from app.auth import hash_password
from app.config import AppConfig, load_config
from app.login_limits import LoginLimiter

PASSWORD = "correct horse battery"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _registry(scripted_module):
    """Only the threshold test expert (these tests check sign-in, not a model)."""
    from experts.registry import ExpertRegistry

    registry = ExpertRegistry()
    registry.register("threshold_volume", scripted_module.ThresholdExpert)
    return registry


def _build(tmp_path, scripted_module, **auth):
    """The app (not served) with users alice and bob, state beside the audit log in ``tmp_path``."""
    from app.server import build_app

    cfg = AppConfig()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    cfg.auth.users_file = tmp_path / "users.toml"
    if not cfg.auth.users_file.exists():
        cfg.auth.users_file.write_text(f'[users]\nalice = "{hash_password(PASSWORD)}"\nbob = "{hash_password(PASSWORD)}"\n')
    for key, value in auth.items():
        setattr(cfg.auth, key, value)
    api, _, _ = build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    return api, cfg


def _sign_in(api, address: str, user: str, password: str) -> httpx.Response:
    return _browser(api, address).post("/login", data={"username": user, "password": password})


def _browser(api, address: str) -> TestClient:
    """A client whose requests come from ``address`` (the TCP peer the app sees)."""
    return TestClient(api, client=(address, 40000))


def test_spraying_many_names_from_one_address_is_slowed_then_refused(tmp_path, scripted_module):
    api, _ = _build(tmp_path, scripted_module)
    attacker = _browser(api, "203.0.113.10")
    start = time.monotonic()
    codes = [attacker.post("/login", data={"username": f"user{i:02d}", "password": "Winter2024!"}).status_code
             for i in range(40)]
    elapsed = time.monotonic() - start
    assert codes[:6] == [400] * 6  # 5 free failures, the 6th starts a wait of 1 s, then 2 s, 4 s, ...
    assert codes.count(400) <= 8 and codes.count(429) >= 32, codes
    refused = _sign_in(api, "203.0.113.10", "alice", PASSWORD)  # even the right password waits its turn
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "try again in" in refused.json()["detail"]
    assert elapsed < 20.0  # refused at once (no password check, no sleeping server): asking faster gains nothing


def test_colleagues_signing_in_at_once_from_one_address_all_get_in(tmp_path, scripted_module):
    """Sixteen people behind one address (a ward's NAT, a load test) sign in at the same moment: none is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from app.server import serve
    from localhost import free_port

    cfg = AppConfig()
    cfg.server.port = free_port()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    cfg.auth.users_file = tmp_path / "users.toml"
    cfg.auth.users_file.write_text(f'[users]\nalice = "{hash_password(PASSWORD)}"\n')
    server = serve(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module), block=False)
    try:
        def sign_in(_):
            with httpx.Client(base_url=server.url, timeout=30) as http:
                return http.post("/login", data={"username": "alice", "password": PASSWORD}).status_code

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(sign_in, range(16))) == [200] * 16
    finally:
        server.close()


def test_waits_grow_per_address_and_a_success_clears_them(tmp_path):
    clock = FakeClock()
    limiter = LoginLimiter(tmp_path / "state.json", failures_before_delay=3, max_delay_s=60, clock=clock)
    waits = []
    for _ in range(10):
        clock.now += limiter.wait_s("198.51.100.4")  # the attacker waits exactly as long as told
        admission = limiter.admit("198.51.100.4")
        assert admission.admitted
        limiter.settle(admission, succeeded=False)
        waits.append(limiter.wait_s("198.51.100.4"))
    assert waits == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60]
    assert not limiter.admit("198.51.100.4").admitted
    clock.now += 60
    ok = limiter.admit("198.51.100.4")
    limiter.settle(ok, succeeded=True)
    assert limiter.wait_s("198.51.100.4") == 0
    for _ in range(3):  # the count starts over after a success
        limiter.settle(limiter.admit("198.51.100.4"), succeeded=False)
    assert limiter.wait_s("198.51.100.4") == 0


def test_failing_for_a_colleagues_name_does_not_lock_the_colleague_out(tmp_path, scripted_module):
    api, _ = _build(tmp_path, scripted_module)
    attacker = _browser(api, "203.0.113.66")
    codes = [attacker.post("/login", data={"username": "alice", "password": f"guess{i}"}).status_code for i in range(20)]
    assert codes.count(429) >= 12  # the attacker's address is held back ...
    at_her_desk = _sign_in(api, "198.51.100.7", "alice", PASSWORD)
    assert at_her_desk.status_code == 200  # ... while alice signs in from her own workstation at once
    assert any(name.startswith("access-token") for name in at_her_desk.cookies.keys())


def test_parallel_attempts_cannot_slip_past_the_count(tmp_path):
    limiter = LoginLimiter(tmp_path / "state.json", failures_before_delay=5, clock=FakeClock())
    admissions = [limiter.admit("192.0.2.8") for _ in range(50)]  # 50 requests in flight, none settled yet
    assert sum(a.admitted for a in admissions) == 6


def test_global_budget_slows_many_addresses_but_not_recent_workstations(tmp_path):
    clock = FakeClock()
    limiter = LoginLimiter(tmp_path / "state.json", global_failures_per_minute=10, clock=clock)
    limiter.settle(limiter.admit("198.51.100.7"), succeeded=True)  # alice's workstation signed in yesterday
    clock.now += 86400
    for i in range(10):  # a botnet: one failure from each of many addresses
        limiter.settle(limiter.admit(f"203.0.113.{i}"), succeeded=False)
    fresh = limiter.admit("203.0.113.200")
    assert not fresh.admitted and 0 < fresh.wait_s <= 60
    assert limiter.admit("198.51.100.7").admitted  # a workstation with a recent sign-in still gets in
    clock.now += 61
    assert limiter.admit("203.0.113.201").admitted  # the budget refills after the minute


def test_ipv6_hosts_in_one_64_share_a_count(tmp_path):
    limiter = LoginLimiter(tmp_path / "state.json", failures_before_delay=2, clock=FakeClock())
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        limiter.settle(limiter.admit(host), succeeded=False)
    assert limiter.wait_s("2001:db8:1:2::99") > 0 and limiter.wait_s("2001:db8:1:3::1") == 0


def test_counters_survive_a_restart_and_hold_no_names_or_passwords(tmp_path):
    clock = FakeClock()
    state = tmp_path / "login-state.json"
    before = LoginLimiter(state, failures_before_delay=2, clock=clock)
    for _ in range(6):
        clock.now += before.wait_s("203.0.113.10")
        before.settle(before.admit("203.0.113.10"), succeeded=False)
    wait = before.wait_s("203.0.113.10")
    assert wait == 8
    after = LoginLimiter(state, failures_before_delay=2, clock=clock)  # a new process reading the same file
    assert after.wait_s("203.0.113.10") == wait and not after.admit("203.0.113.10").admitted
    text = state.read_text()
    assert "203.0.113.10" in text and "alice" not in text and "password" not in text.lower()
    assert [p.name for p in tmp_path.iterdir()] == ["login-state.json"]  # no temporary file left behind


def test_a_restarted_app_keeps_refusing(tmp_path, scripted_module):
    api, cfg = _build(tmp_path, scripted_module, global_failures_per_minute=4)
    assert cfg.login_state_file == tmp_path / "login-state.json"
    for i in range(4):
        assert _sign_in(api, f"203.0.113.{i}", "alice", "nope").status_code == 400
    assert _sign_in(api, "203.0.113.50", "alice", "nope").status_code == 429
    restarted, _ = _build(tmp_path, scripted_module, global_failures_per_minute=4)
    assert _sign_in(restarted, "203.0.113.51", "alice", PASSWORD).status_code == 429
    assert "203.0.113.3" in cfg.login_state_file.read_text()


def test_unreadable_state_file_starts_empty_with_a_warning(tmp_path, caplog):
    state = tmp_path / "login-state.json"
    state.write_text("{not json")
    limiter = LoginLimiter(state, clock=FakeClock())
    assert limiter.admit("192.0.2.1").admitted
    assert "could not be read" in caplog.text


# --- the proxy's user header -------------------------------------------------------------------


@pytest.fixture
def header_server(tmp_path, scripted_module):
    """The app behind a trusted-header proxy, served by uvicorn; ``trusted_proxies`` from a config file."""
    from app.server import serve
    from localhost import free_port

    def start(proxies: str):
        config_file = tmp_path / "m3.toml"
        config_file.write_text(f'[server]\nport = {free_port()}\n[auth]\ntrusted_header = "X-Remote-User"\n'
                               f'trusted_proxies = {proxies}\n[audit]\nlog_path = "{tmp_path / "audit.jsonl"}"\n')
        cfg = load_config(config_file, env={})
        servers.append(serve(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module),
                             block=False))
        return servers[-1].url

    servers: list = []
    yield start
    for server in servers:
        server.close()


def test_header_login_from_a_configured_proxy_with_x_forwarded_for_is_accepted(header_server):
    url = header_server('["127.0.0.1/32"]')  # a local nginx, as docs/deploy.md sets it up
    with httpx.Client(base_url=url, timeout=10) as http:
        nginx = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        page = http.get("/config", headers={**nginx, "X-Remote-User": "dr.who"})
        assert page.status_code == 200 and page.json()["username"] == "dr.who"
        for bad in ("<script>alert(1)</script>", "a" * 65, "dr who", "drwho;rm"):
            assert http.get("/config", headers={**nginx, "X-Remote-User": bad}).status_code == 401, bad
        assert http.get("/config", headers=nginx).status_code == 401  # the proxy did not name anyone
        assert http.get("/healthz").status_code == 200


def test_header_login_from_an_address_that_is_not_a_configured_proxy_is_refused(header_server):
    url = header_server('["10.99.0.0/16"]')  # the proxy is elsewhere; this test's 127.0.0.1 is a local process
    with httpx.Client(base_url=url, timeout=10) as http:
        spoof = {"X-Remote-User": "dr.who", "X-Forwarded-For": "10.99.0.1"}
        assert http.get("/config", headers=spoof).status_code == 401
        assert http.post("/gradio_api/call/ask", json={"data": ["liver?"]}, headers=spoof).status_code == 401


# --- which routes answer without a session ----------------------------------------------------

OPEN_WITHOUT_SESSION = {"/healthz", "/livez", "/readyz", "/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                        "/robots.txt", "/manifest.json", "/pwa_icon", "/pwa_icon/{size}", "/static/{path:path}",
                        "/assets/{path:path}", "/svelte/{path:path}"}


def _routes(routes, prefix=""):
    """(method, path template) for every route of a FastAPI app, through mounts and included routers."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _routes(route.routes, prefix + route.path)
        elif hasattr(route, "original_router"):  # FastAPI's included router (Gradio's /gradio_api routes)
            yield from _routes(route.original_router.routes, prefix)
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                yield method, prefix + route.path


def test_every_route_but_the_page_login_and_static_assets_needs_a_session(tmp_path, scripted_module):
    api, _ = _build(tmp_path, scripted_module)
    routes = sorted(set(_routes(api.routes)))
    paths = {path for _, path in routes}
    assert {"/gradio_api/cancel", "/openapi.json", "/gradio_api/queue/join", "/gradio_api/upload"} <= paths  # found them all
    anonymous = TestClient(api, client=("192.0.2.50", 40000))
    answered = []
    for method, path in routes:
        if path in OPEN_WITHOUT_SESSION:
            continue
        url = re.sub(r"\{[^}]+\}", "x", path)
        response = anonymous.request(method, url, json={"event_id": "x", "session_hash": "x"} if method == "POST" else None)
        if response.status_code != 401:
            answered.append(f"{method} {path} -> {response.status_code}")
    assert not answered, answered
    assert anonymous.get("/").status_code == 200 and anonymous.get("/theme.css").status_code == 200
    signed_in = TestClient(api, client=("192.0.2.51", 40000))
    assert signed_in.post("/login", data={"username": "bob", "password": PASSWORD}).status_code == 200
    assert signed_in.get("/gradio_api/info").status_code == 200 and signed_in.get("/config").status_code == 200
