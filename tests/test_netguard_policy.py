"""Issue 13, finding 5: by default every non-global address is denied, in every form that reaches it;
``allow`` opens what a user needs and ``deny`` adds to the defaults."""

from __future__ import annotations

import pytest

from poolsieve.core.errors import ConfigError
from poolsieve.pipeline.download.netguard import DENIED_MARK, DeniedAddressError, NetworkPolicy
from poolsieve.pipeline.download.stage import DownloadConfig

DEFAULT_TABLE = [
    # IPv4
    ("10.0.0.1", True), ("172.16.5.4", True), ("172.31.255.255", True), ("192.168.1.1", True),
    ("127.0.0.1", True), ("127.255.0.9", True), ("169.254.169.254", True), ("169.254.1.1", True),
    ("100.64.0.1", True), ("100.127.255.254", True), ("100.100.100.200", True),
    ("224.0.0.1", True), ("239.255.255.250", True), ("240.0.0.1", True), ("255.255.255.255", True),
    ("0.0.0.0", True), ("0.1.2.3", True), ("192.0.0.9", True), ("192.0.2.1", True), ("198.51.100.7", True),
    ("203.0.113.9", True), ("198.18.0.1", True), ("192.88.99.1", True),
    ("8.8.8.8", False), ("1.1.1.1", False), ("172.32.0.1", False), ("100.128.0.1", False),
    # IPv6
    ("::1", True), ("::", True), ("fe80::1", True), ("fc00::1", True), ("fd12:3456::1", True),
    ("fd00:ec2::254", True), ("ff02::1", True), ("ff0e::1", True), ("fec0::1", True), ("2001:db8::1", True),
    ("3fff::1", True), ("100::1", True), ("5f00::1", True), ("4000::1", True),
    ("2001:4860:4860::8888", False), ("2606:4700:4700::1111", False),
    # IPv4 carried in IPv6
    ("::ffff:127.0.0.1", True), ("::ffff:169.254.169.254", True), ("::ffff:10.0.0.1", True),
    ("::ffff:8.8.8.8", False),
    ("::127.0.0.1", True), ("::10.0.0.1", True), ("::8.8.8.8", True),  # IPv4-compatible (deprecated)
    ("::ffff:0:127.0.0.1", True),  # IPv4-translated
    ("64:ff9b::169.254.169.254", True), ("64:ff9b::10.0.0.1", True), ("64:ff9b::127.0.0.1", True),
    ("64:ff9b::8.8.8.8", False),  # NAT64 well-known prefix: judged by the IPv4 address it carries
    ("64:ff9b:1::1", True),  # NAT64 local-use
    ("2002:a9fe:a9fe::1", True), ("2002:7f00:1::1", True), ("2002:a00:1::1", True),  # 6to4 of denied
    ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo
]


@pytest.mark.parametrize(("address", "denied"), DEFAULT_TABLE)
def test_default_policy_denies_every_non_global_address(address: str, denied: bool) -> None:
    reason = NetworkPolicy().reason_for_address(address)
    assert (reason is not None) == denied, reason
    if denied:
        assert reason.startswith(f"{DENIED_MARK}: address {address} ")
        assert NetworkPolicy().reason_for_url(f"http://[{address}]/a.jpg" if ":" in address
                                              else f"http://{address}/a.jpg") == reason


def test_embedded_addresses_are_named_in_the_reason() -> None:
    policy = NetworkPolicy()
    assert "embeds IPv4 10.0.0.1 (NAT64), which is in denied network 10.0.0.0/8 (private)" in \
        policy.reason_for_address("64:ff9b::a00:1")
    assert "(6to4)" in policy.reason_for_address("2002:a9fe:a9fe::1")
    assert "(IPv4-compatible)" in policy.reason_for_address("::7f00:1")
    assert "Teredo" in policy.reason_for_address("2001:0:4136:e378:8000:63bf:3fff:fdd2")


ALLOW = ["127.0.0.1/32", "10.0.0.0/8", "169.254.0.0/16", "fd00::/8", "2001::/32"]
ALLOW_TABLE = [
    ("127.0.0.1", False), ("::ffff:127.0.0.1", False), ("127.0.0.2", True),
    ("10.1.2.3", False), ("64:ff9b::10.1.2.3", False), ("2002:a01:203::1", False),
    ("192.168.1.1", True), ("169.254.1.1", False),
    ("169.254.169.254", True),  # metadata (/32) is more specific than the allowed /16
    ("fd12::1", False), ("fd00:ec2::254", True),  # AWS metadata (/128) likewise
    ("fc00::1", True),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo allowed, but it carries a denied client
    ("2001:0:808:808:0:0:f7f7:f7f7", False),  # Teredo server 8.8.8.8, client 8.8.8.8
    ("8.8.8.8", False),
]


@pytest.mark.parametrize(("address", "denied"), ALLOW_TABLE)
def test_allow_list_opens_only_what_it_names(address: str, denied: bool) -> None:
    reason = NetworkPolicy(allow=ALLOW).reason_for_address(address)
    assert (reason is not None) == denied, reason


def test_deny_adds_to_the_defaults_and_the_most_specific_rule_wins() -> None:
    policy = NetworkPolicy(deny=["8.8.8.0/24", "2606:4700::/32"])
    assert "(--deny-network)" in policy.reason_for_address("8.8.8.8")
    assert policy.reason_for_address("2606:4700:4700::1111")
    assert policy.reason_for_address("8.8.4.4") is None
    assert policy.reason_for_address("10.0.0.1") and policy.reason_for_address("169.254.169.254")  # defaults stay
    assert policy.reason_for_address("64:ff9b::8.8.8.8")  # the NAT64 form of a user-denied address
    both = NetworkPolicy(deny=["10.0.0.5/32", "10.9.0.0/16"], allow=["10.0.0.0/8", "10.9.0.0/16"])
    assert both.reason_for_address("10.0.0.6") is None
    assert both.reason_for_address("10.0.0.5")  # a more specific deny inside an allow
    assert both.reason_for_address("10.9.1.1")  # the same network denied and allowed: denied
    metadata = NetworkPolicy(allow=["169.254.169.254/32"])  # only by its own address
    assert metadata.reason_for_address("169.254.169.254") is None
    assert NetworkPolicy(allow=["::ffff:127.0.0.1/128"]).reason_for_address("127.0.0.1") is None


def test_names_schemes_and_resolution() -> None:
    policy = NetworkPolicy(allow=["127.0.0.1/32"])
    assert "cloud metadata name" in policy.reason_for_url("http://METADATA.google.internal./computeMetadata/v1/")
    for url in ("file:///etc/hostname", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA",
                "gopher://example.com/", "//example.com/a.jpg", "example.com/a.jpg"):
        reason = policy.reason_for_url(url)
        assert reason.startswith(f"{DENIED_MARK}: url scheme") and "only http and https" in reason, url
    assert "malformed url" in policy.reason_for_url("http://[::1/a.jpg")
    # Hosts that a proxy could parse differently from urllib (the proxy, not this check, would resolve them):
    for url in ("http://169.254.169.254\\@example.com/x", "http://a@169.254.169.254@example.com/",
                "http://exa mple.com/", "http://example.com|169.254.169.254/"):
        assert "malformed url" in policy.reason_for_url(url), url
    assert policy.reason_for_url("http://user:p%40ss@example.com/a.jpg") is None
    assert policy.reason_for_url("http://b\u00fccher.de/a.jpg") is None  # an IDN host
    assert "no host" in policy.reason_for_url("http:///a.jpg")
    assert policy.reason_for_url("HTTPS://example.com/a.jpg") is None
    with pytest.raises(DeniedAddressError, match="host localhost resolves to 127.0.0.1, which is in denied"):
        NetworkPolicy().check_url("http://localhost:8080/a.jpg", resolve=True)
    with pytest.raises(DeniedAddressError, match="resolves to 127.0.0.1"):
        NetworkPolicy().check_url("http://2130706433/a.jpg", resolve=True)  # 127.0.0.1 as one number
    policy.check_url("http://localhost:8080/a.jpg", resolve=True)  # allowed: no error


def test_config_and_cli_options(tmp_path) -> None:
    from poolsieve.pipeline.cli import make_context, stage_parser
    from poolsieve.pipeline.download.stage import STAGE

    assert DownloadConfig().deny_networks == [] and DownloadConfig().allow_networks == []
    for bad in ({"deny_networks": ["10.0.0.0/33"]}, {"allow_networks": ["localhost"]}):
        with pytest.raises(ConfigError, match=r"download\.(deny|allow)_networks: .* is not a network"):
            DownloadConfig(**bad).validate()
    with pytest.raises(ConfigError, match="allow_networks must be a list"):
        DownloadConfig(allow_networks="127.0.0.1/32").validate()
    config = tmp_path / "poolsieve.yaml"
    config.write_text("download: {allow_networks: ['192.168.0.0/16']}\n")
    args = stage_parser("download").parse_args(
        ["-w", str(tmp_path / "ws"), "-c", str(config), "--deny-network", "8.8.8.0/24",
         "--deny-network", "1.1.1.1/32", "--executor", "local"])
    cfg = STAGE.config_from(make_context(args).section("download"), args)
    assert cfg.allow_networks == ["192.168.0.0/16"] and cfg.deny_networks == ["8.8.8.0/24", "1.1.1.1/32"]
    args = stage_parser("download").parse_args(
        ["-w", str(tmp_path / "ws"), "-c", str(config), "--allow-network", "127.0.0.1/32", "--executor", "local"])
    assert STAGE.config_from(make_context(args).section("download"), args).allow_networks == ["127.0.0.1/32"]
