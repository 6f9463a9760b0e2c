"""[pacs] settings are checked when the config is read, before anything starts: the protocol, a complete login (one
method), TLS files that exist, parse and pair, DIMSE addresses and AE titles, the outbox age limit. Every new key
is read from the file or its M3_* variable here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from app.config import ConfigError, PacsConfig, env_variable_names, load_config

ROOT = Path(__file__).resolve().parents[2]


def _file(tmp_path, text: str):
    path = tmp_path / "m3.toml"
    path.write_text(text)
    return path


def test_an_https_pacs_with_mutual_tls_and_a_bearer_token_loads_from_the_file_and_the_environment(tmp_path, tls_files):
    path = _file(tmp_path, f'[pacs]\nurl = "https://pacs.example.org/dicom-web"\nca_bundle = "{tls_files.ca}"\n'
                           f'client_cert = "{tls_files.client_cert}"\nclient_key = "{tls_files.client_key}"\n'
                           "outbox_max_age_days = 3.5\n")
    config = load_config(path, env={"M3_PACS_TOKEN": "t0ken"}).pacs
    assert (config.protocol, config.token, config.ca_bundle, config.client_cert, config.client_key, config.outbox_max_age_days) == (
        "dicomweb", "t0ken", tls_files.ca, tls_files.client_cert, tls_files.client_key, 3.5)
    assert "t0ken" not in repr(config)
    assert env_variable_names()["pacs.token"] == "M3_PACS_TOKEN"


def test_a_dimse_pacs_loads_from_m3_variables():
    config = load_config(env={"M3_PACS_PROTOCOL": "dimse", "M3_PACS_HOST": "pacs.example.org", "M3_PACS_PORT": "11112",
                              "M3_PACS_CALLED_AE_TITLE": "HOSPITAL_PACS", "M3_PACS_AE_TITLE": "M3_ONPREM",
                              "M3_PACS_MOVE_AE_TITLE": "M3_STORE", "M3_PACS_MOVE_PORT": "4242",
                              "M3_PACS_OUTBOX_MAX_AGE_DAYS": "0"}).pacs
    assert config.enabled and (config.host, config.port, config.called_ae_title, config.ae_title, config.move_ae_title,
                               config.move_port, config.outbox_max_age_days) == (
        "pacs.example.org", 11112, "HOSPITAL_PACS", "M3_ONPREM", "M3_STORE", 4242, 0.0)


@pytest.mark.parametrize(("text", "env", "message"), [
    ('url = "http://pacs/dicom-web"\nusername = "m3"\n', {}, r"pacs\.username is set \('m3'\) but \$M3_PACS_PASSWORD is empty"),
    ('url = "http://pacs/dicom-web"\n', {"M3_PACS_PASSWORD": "pw"}, r"\$M3_PACS_PASSWORD is set but pacs\.username is empty"),
    ('url = "http://pacs/dicom-web"\nusername = "m3"\n', {"M3_PACS_PASSWORD": "pw", "M3_PACS_TOKEN": "t"},
     r"both basic auth \(pacs\.username\) and a bearer token \(\$M3_PACS_TOKEN\) are set.*one login method only"),
    ('url = "http://pacs/dicom-web"\ntoken = "t"\n', {}, r"pacs\.token must not be in the config file; set \$M3_PACS_TOKEN instead"),
    ('url = "https://pacs/dicom-web"\nclient_cert = "{client_cert}"\n', {},
     r"pacs\.client_cert is set but pacs\.client_key is not.*set both or neither"),
    ('url = "https://pacs/dicom-web"\nclient_key = "{client_key}"\n', {}, r"pacs\.client_key is set but pacs\.client_cert is not"),
    ('url = "https://pacs/dicom-web"\nca_bundle = "/nowhere/hospital-ca.pem"\n', {},
     r"pacs\.ca_bundle must be a readable PEM file, got /nowhere/hospital-ca\.pem, which does not exist"),
    ('url = "https://pacs/dicom-web"\nca_bundle = "{not_pem}"\n', {}, r"pacs\.ca_bundle .* holds no usable CA certificate"),
    ('url = "https://pacs/dicom-web"\nclient_cert = "{client_cert}"\nclient_key = "{stranger_key}"\n', {},
     r"pacs\.client_cert .* and pacs\.client_key .* cannot be used together"),
    ('url = "http://pacs/dicom-web"\nca_bundle = "{ca}"\n', {}, r"pacs\.ca_bundle is set but pacs\.url is not https"),
    ('protocol = "dimes"\n', {}, r"pacs\.protocol must be one of dicomweb, dimse, got 'dimes' \(did you mean dimse\?\)"),
    ('protocol = "dimse"\nhost = "pacs"\n', {}, r"pacs\.called_ae_title must name the PACS's AE title"),
    ('protocol = "dimse"\nhost = "pacs"\ncalled_ae_title = "PACS"\nae_title = "AN_AE_TITLE_TOO_LONG"\n', {},
     r"pacs\.ae_title must be 1-16 characters.*got 'AN_AE_TITLE_TOO_LONG'"),
    ('protocol = "dimse"\nhost = "pacs"\ncalled_ae_title = "PACS"\nmove_port = 0\n', {}, r"pacs\.move_port must be 1-65535, got 0"),
    ('protocol = "dimse"\nhost = "pacs"\ncalled_ae_title = "PACS"\nurl = "http://pacs/dicom-web"\n', {},
     r"pacs\.url is a DICOMweb setting but pacs\.protocol is dimse"),
    ('protocol = "dimse"\nhost = "pacs"\ncalled_ae_title = "PACS"\n', {"M3_PACS_TOKEN": "t"},
     r"pacs\.token is a DICOMweb setting but pacs\.protocol is dimse"),
    ('url = "http://pacs/dicom-web"\nhost = "pacs"\n', {}, r"pacs\.host is a DIMSE setting but pacs\.protocol is dicomweb"),
    ('protocol = "dimse"\nwriteback_enabled = true\n', {}, r"pacs\.writeback_enabled is true but pacs\.host is empty"),
    ('url = "http://pacs/dicom-web"\noutbox_max_age_days = -1\n', {}, r"pacs\.outbox_max_age_days must be >= 0 \(0 = no expiry\), got -1"),
])
def test_a_pacs_setting_that_cannot_work_refuses_start_naming_it(tmp_path, tls_files, text, env, message):
    not_pem = tmp_path / "not-a-certificate.pem"
    not_pem.write_text("this is no certificate\n")
    files = {k: str(v) for k, v in dataclasses.asdict(tls_files).items()} | {"not_pem": str(not_pem)}
    with pytest.raises(ConfigError, match=message):
        load_config(_file(tmp_path, "[pacs]\n" + text.format(**files)), env=env)


def test_the_settings_check_is_the_same_for_a_config_built_in_code(tls_files):
    with pytest.raises(ConfigError, match=r"pacs\.client_cert is set but pacs\.client_key is not"):
        PacsConfig(url="https://pacs/dicom-web", client_cert=tls_files.client_cert).check()
    PacsConfig(url="https://pacs/dicom-web", ca_bundle=tls_files.ca, client_cert=tls_files.client_cert,
               client_key=tls_files.client_key).check()  # a complete mutual TLS setup passes


def test_the_pacs_examples_of_the_deploy_guide_start_as_written(tmp_path, tls_files):
    guide = (ROOT / "docs" / "deploy.md").read_text()
    section = guide[guide.index("## 4. PACS"):guide.index("## 5.")]
    mtls, dimse = re.findall(r"```toml\n(.*?)```", section, flags=re.S)

    config = load_config(_file(tmp_path, dimse), env={}).pacs
    assert (config.protocol, config.enabled, config.called_ae_title, config.ae_title, config.move_port) == (
        "dimse", True, "HOSPITAL_PACS", "M3", 11112)

    with pytest.raises(ConfigError, match=r"pacs\.ca_bundle must be a readable PEM file, got /etc/m3/tls/hospital-ca\.pem"):
        load_config(_file(tmp_path, mtls), env={})  # the files must be mounted first
    mounted = (mtls.replace("/etc/m3/tls/hospital-ca.pem", str(tls_files.ca))
               .replace("/etc/m3/tls/m3.pem", str(tls_files.client_cert)).replace("/etc/m3/tls/m3.key", str(tls_files.client_key)))
    config = load_config(_file(tmp_path, mounted), env={"M3_PACS_TOKEN": "t"}).pacs
    assert config.client_cert == tls_files.client_cert and config.url == "https://pacs.example.org/dicom-web"
