"""TLS (issue 14, item 5): nginx terminates TLS on its second port in front
of the nodes; the client library connects over it with a private CA, and
refuses a server it cannot verify. The certificates are made here, at test
time, by a CA of the test's own."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gchat.client import Client, ConnectionLost, GchatError
from tests.cluster_support import Nginx
from tests.support import ROOT, Wire


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server full chain, server key): a CA, and a
    certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("gchat test CA")).issuer_name(_name("gchat test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, chain, key_pem = directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key_pem.chmod(0o600)
    return ca_pem, chain, key_pem


@pytest.fixture
def tls_front(make_server: Any, tmp_path: Path) -> Iterator[tuple[Nginx, Path]]:
    ca, chain, key = make_certificates(tmp_path)
    node = make_server()
    proxy = Nginx([node.address], tmp_path, web_upstreams=[node.web_address], certificate=(chain, key)).start()
    yield proxy, ca
    proxy.stop()


def test_chat_over_nginx_tls_with_the_client_library(tls_front: tuple[Nginx, Path]) -> None:
    proxy, ca = tls_front
    host, port = proxy.tls_address
    with Client.connect(host, port, tls=True, ca=str(ca)) as alice, \
            Client.connect(host, port, tls=True, ca=str(ca)) as bob:
        aid, bid = alice.register("alice-tls", "pw"), bob.register("bob-tls", "pw")
        alice.login(aid, "pw")
        bob.login(bid, "pw")
        assert alice.chat(bid, "over TLS") == "online"
        message = bob.next_message(timeout=10)
        assert message is not None and (message.sender_id, message.text) == (aid, "over TLS")
        # and with a client on the plain port of the same nginx
        with Wire(proxy.address, b"\0") as plain:
            cid = plain.register()
            plain.login(cid)
            assert alice.chat(cid, "to a plain client") == "online"
            assert plain.recv()["msg"] == "to a plain client"


def test_first_requests_over_tls_are_answered_on_every_connection(tls_front: tuple[Nginx, Path]) -> None:
    """The client's reader takes the server's session tickets while the first
    request is written from another thread. Over ssl.SSLSocket that shared
    one OpenSSL object between two threads: about 1 connection in 100 lost
    its reply (RequestTimeout) or broke ('bad record mac')."""
    proxy, ca = tls_front
    host, port = proxy.tls_address

    def one(i: int) -> str | None:
        try:
            with Client.connect(host, port, tls=True, ca=str(ca), timeout=3) as c:
                c.login(c.register(f"first-{i}", "pw"), "pw")
            return None
        except GchatError as e:
            return repr(e)

    with ThreadPoolExecutor(4) as pool:
        failed = [e for e in pool.map(one, range(400)) if e is not None]
    assert failed == []


def test_the_web_app_over_https(tls_front: tuple[Nginx, Path]) -> None:
    proxy, ca = tls_front
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://127.0.0.1:{proxy.https_port}/", timeout=10, context=context) as r:
        assert r.status == 200 and b"<html" in r.read().lower()


def test_the_server_is_verified_by_default(tls_front: tuple[Nginx, Path]) -> None:
    proxy, _ = tls_front
    host, port = proxy.tls_address
    with pytest.raises(ConnectionLost, match="certificate was not verified: .*--ca"):
        Client.connect(host, port, tls=True)  # the test CA is not one the system trusts
    with pytest.raises(ConnectionLost, match="TLS"):
        Client.connect(*proxy.address, tls=True)  # the plain port speaks no TLS


def test_gchat_client_tls_and_ca(tls_front: tuple[Nginx, Path]) -> None:
    proxy, ca = tls_front
    host, port = proxy.tls_address
    done = subprocess.run(
        [sys.executable, "-m", "gchat.client.tui", host, str(port), "--tls", "--ca", str(ca),
         "--register", "carol-tls"],
        input="pw\n", capture_output=True, text=True, timeout=60, cwd=ROOT,  # the password, asked for
    )
    assert "registered carol-tls" in done.stdout, done


def test_nginx_conf_renders_with_and_without_its_tls_port(tmp_path: Path) -> None:
    from gchat.tools.nginxconf import Tls, render

    template = (ROOT / "nginx.conf").read_text()
    nodes, web = [("127.0.0.1", 6000)], [("127.0.0.1", 6080)]
    plain = render(template, nodes, "127.0.0.1:8000", tmp_path)
    assert "ssl" not in plain and plain.count("server {") == 1
    plain_web = render(template, nodes, "127.0.0.1:8000", tmp_path, web, "127.0.0.1:8080")
    assert "ssl" not in plain_web and "listen 127.0.0.1:8080;" in plain_web
    cert = Tls("127.0.0.1:8443", Path("/c/full.pem"), Path("/c/key.pem"), web_listen="127.0.0.1:8444")
    tls = render(template, nodes, "127.0.0.1:8000", tmp_path, tls=cert)
    assert "listen 127.0.0.1:8000;" in tls and "listen 127.0.0.1:8443 ssl;" in tls and "http {" not in tls
    assert "ssl_certificate /c/full.pem;" in tls and "ssl_certificate_key /c/key.pem;" in tls
    assert tls.count("proxy_pass gchat;") == 2
    both = render(template, nodes, "127.0.0.1:8000", tmp_path, web, "127.0.0.1:8080", cert)
    assert "listen 127.0.0.1:8443 ssl;" in both and "listen 127.0.0.1:8444 ssl;" in both
    assert both.count("ssl_certificate /c/full.pem;") == 2
