"""The clients against a real TLS server: the service under uvicorn on a loopback port, its certificates made here
with the `openssl` command. A certificate the client does not accept (self-signed, or valid for another host) is
raised at once as `SegmentCertificateError`, naming what is wrong with it, and `segment` stops at once (exit 2)
saying so. Before: httpx raises it as a `ConnectError`, as it does a refused connection, so every call made its
retries, each a new handshake refused alike, with growing waits; `wait_ready` and `segment` waited out their whole
timeout, then said only "not reachable or not ready"; and a certificate refused in the middle of a run failed
file after file, each after its retries, while the files that reached a good connection reset the count of
`--max-connection-failures`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clients.webcam import main as webcam_main
from clients.webcam_outage import Outage
from service.app import create_app
from service.client import AsyncSegmentClient, SegmentCertificateError, SegmentClient, SegmentConnectionError
from service.settings import Settings
from tests.clients.test_batch_interrupts import Segment, outputs, photos
from tests.clients.test_webcam_outage import write_clip
from tests.service.svc_helpers import png_bytes, scene

RETRIES = 5  # with the client's backoff, 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s and more of waiting, were they made


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path  # the issuer the tests trust (SSL_CERT_FILE)
    good: KeyPair  # issued by `ca` for 127.0.0.1
    self_signed: KeyPair  # for 127.0.0.1, issued by nobody the client trusts
    other_host: KeyPair  # issued by `ca`, for another host name


def _openssl(folder: Path, name: str, subject: str, issuer: KeyPair | None = None) -> KeyPair:
    """A P-256 key and its certificate, valid two days; an issuer's when `issuer` is given, else self-signed."""
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    extensions = ["-addext", f"subjectAltName={subject}", "-addext", "basicConstraints=critical,CA:FALSE"]
    signing = ["-CA", str(issuer.cert), "-CAkey", str(issuer.key)] if issuer else []
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", f"/CN={name}", "-keyout", str(pair.key), "-out", str(pair.cert),
                    *(extensions if subject else []), *signing], check=True, capture_output=True)
    return pair


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = _openssl(folder, "test-ca", "")
    return Certs(ca.cert, _openssl(folder, "good", "IP:127.0.0.1", ca), _openssl(folder, "self", "IP:127.0.0.1"),
                 _openssl(folder, "other", "DNS:other.example", ca))


def _closing(app: ASGIApp) -> ASGIApp:
    """`app` with every answer closing its connection (`Connection: close`): each request makes a connection."""
    async def closing(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing if scope["type"] == "http" else send)
    return closing


class TlsServer:
    """The service under uvicorn over TLS on a loopback port (`closing`: each answer closes its connection). It
    presents `first`'s certificate, and from the handshake after the next `after` on that of `switch(pair, after)`;
    `handshakes` counts the handshakes begun (the connection attempts that reached TLS)."""

    def __init__(self, model: Path, first: KeyPair, closing: bool = False) -> None:
        settings = Settings(model_path=model, host="127.0.0.1", port=0, intra_op_threads=1, worker_threads=2,
                            exit_when_unhealthy=False)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(settings)
        config = uvicorn.Config(_closing(app) if closing else app, log_level="critical", lifespan="on",
                                ssl_certfile=str(first.cert), ssl_keyfile=str(first.key))
        config.load()  # its SSL context made now, to be watched
        assert config.ssl is not None
        config.ssl.sni_callback = self._hello  # called at every ClientHello, with or without a server name
        self.handshakes = 0
        self._later: ssl.SSLContext | None = None
        self._switch_at = 0
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def _hello(self, conn: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.handshakes += 1
        if self._later is not None and self.handshakes >= self._switch_at:
            conn.context = self._later

    def switch(self, pair: KeyPair, after: int) -> None:
        later = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        later.load_cert_chain(pair.cert, pair.key)
        self._later, self._switch_at = later, self.handshakes + after + 1

    def __enter__(self) -> TlsServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=self.url, verify=False) as client:  # ready, whatever it presents
            while not (self.server.started and client.get("/readyz").status_code == 200):
                assert self.thread.is_alive() and time.monotonic() < deadline, "the TLS server did not start"
                time.sleep(0.05)
        self.handshakes = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def trusting_ca(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`certs.ca` trusted as users trust a private issuer, through SSL_CERT_FILE (read by httpx when a client is
    made, and inherited by the `segment` processes started here)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    return certs.ca


@pytest.fixture
def self_signed(tiny_onnx_model: Path, certs: Certs) -> Iterator[TlsServer]:
    with TlsServer(tiny_onnx_model, certs.self_signed) as server:
        yield server


def test_a_trusted_certificate_serves(tiny_onnx_model: Path, certs: Certs, trusting_ca: Path) -> None:
    """The control: the same server with a certificate the client trusts answers (the failures below are the
    certificates', not the setup's)."""
    with TlsServer(tiny_onnx_model, certs.good) as server, SegmentClient(server.url, retries=RETRIES) as client:
        client.wait_ready(timeout=10)
        assert client.segment(png_bytes(scene(96, 64)), "labels").array().shape == (64, 96)
    assert server.handshakes == 1  # one connection, kept alive


def test_a_self_signed_certificate_is_raised_at_once(self_signed: TlsServer) -> None:
    started = time.monotonic()
    with SegmentClient(self_signed.url, retries=RETRIES) as client, \
            pytest.raises(SegmentCertificateError) as info:
        client.segment(png_bytes(scene(96, 64)), "labels")
    took = time.monotonic() - started
    assert self_signed.handshakes == 1, self_signed.handshakes  # before: 1 + RETRIES
    assert took < 1.5, took  # before: the retries' waits, 6 s or more
    assert info.value.code == "certificate_error" and isinstance(info.value, SegmentConnectionError)
    message = str(info.value)
    assert message.startswith(f"POST {self_signed.url}/segment: the server's TLS certificate is not accepted: "
                              "self-signed certificate (not retried"), message
    assert "attempts" not in message


def test_the_async_client_raises_it_at_once_too(self_signed: TlsServer) -> None:
    async def call() -> SegmentCertificateError:
        async with AsyncSegmentClient(self_signed.url, retries=RETRIES) as client:
            with pytest.raises(SegmentCertificateError) as info:
                await client.classes()
            return info.value

    started = time.monotonic()
    error = asyncio.run(call())
    assert time.monotonic() - started < 1.5 and self_signed.handshakes == 1, self_signed.handshakes
    assert "self-signed certificate" in str(error) and str(error).startswith(f"GET {self_signed.url}/classes: ")


def test_a_certificate_for_another_host_is_raised_at_once(tiny_onnx_model: Path, certs: Certs,
                                                          trusting_ca: Path) -> None:
    """Issued by a trusted issuer, but for another host name: a URL that names the wrong host."""
    with TlsServer(tiny_onnx_model, certs.other_host) as server, SegmentClient(server.url, retries=RETRIES) as client, \
            pytest.raises(SegmentCertificateError) as info:
        client.classes()
    assert server.handshakes == 1
    assert re.search(r"certificate is not accepted: IP address mismatch, certificate is not valid for "
                     r"'127\.0\.0\.1'", str(info.value)), info.value


def test_wait_ready_raises_it_at_once(self_signed: TlsServer) -> None:
    """Before: `wait_ready` probed until its timeout, then said the server was not ready."""
    started = time.monotonic()
    with SegmentClient(self_signed.url) as client, pytest.raises(SegmentCertificateError) as info:
        client.wait_ready(timeout=30)
    assert time.monotonic() - started < 1.5 and self_signed.handshakes == 1
    assert str(info.value).startswith(f"GET {self_signed.url}/readyz: the server's TLS certificate is not accepted")


def test_segment_stops_at_once_naming_the_certificate(self_signed: TlsServer, tmp_path: Path) -> None:
    """Before: it waited `--wait` (here 60 s) for a server that could never be ready for it, then exit 2 with
    "not reachable or not ready"."""
    photos(tmp_path / "in", 3)
    run = Segment(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--server", self_signed.url, "--wait", "60")
    try:
        started = time.monotonic()
        code = run.wait(30)
        took = time.monotonic() - started
    finally:
        run.kill()
    assert code == 2 and took < 15, (took, run.err)
    assert run.lines == [f"segment: GET {self_signed.url}/readyz: the server's TLS certificate is not accepted: "
                         "self-signed certificate (not retried: the URL must name a host the certificate is valid "
                         "for, and its issuer must be trusted, e.g. SSL_CERT_FILE=/path/to/ca.pem)"], run.err
    assert self_signed.handshakes == 1
    assert not (tmp_path / "out").exists()


def test_a_certificate_refused_mid_run_stops_it_at_once(tiny_onnx_model: Path, certs: Certs, trusting_ca: Path,
                                                        tmp_path: Path) -> None:
    """Every answer closes its connection, so each request makes a handshake of its own: the first six (readiness,
    the model, four files) get the trusted certificate, every later one a self-signed one, as when a server's
    certificate is replaced by a bad one mid-run. Before: each file left failed on its own, after its retries (a
    handshake each), until `--max-connection-failures` files in a row had, and the run said the server could not
    be reached."""
    photos(tmp_path / "in", 40)
    with TlsServer(tiny_onnx_model, certs.good, closing=True) as server:
        server.switch(certs.self_signed, after=6)
        run = Segment(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--output", "labels", "--server",
                      server.url, "-j", "2", "--retries", "3")
        try:
            code = run.wait(60)
        finally:
            run.kill()
        handshakes = server.handshakes
    assert code == 2, run.err
    # The file that met the certificate first, and the other thread's when it was on its way too.
    failed = re.findall(r"  FAILED .*: certificate_error: .*self-signed certificate", run.err)
    assert 1 <= len(failed) <= 2 and handshakes <= 6 + 2, (handshakes, run.err)
    assert "segment: stopped at once, as every file would fail alike: POST " in run.err
    assert "could not reach" not in run.err
    summary = re.search(rf"segment: 4 written, 0 skipped \(already done\), {len(failed)} failed, 40 total; stopped, "
                        rf"{36 - len(failed)} not done", run.err)
    assert summary, run.err
    assert len(outputs(tmp_path / "out")) == 4


def test_segment_webcam_stops_at_once_naming_the_certificate(tiny_onnx_model: Path, certs: Certs, trusting_ca: Path,
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The certificate replaced by a bad one after five frames (as above). Before: the run took it for the server
    gone away, waited `--wait` (here 60 s) for it to be ready again, and then said it was not."""
    clip = write_clip(tmp_path / "clip.avi", 100)
    with TlsServer(tiny_onnx_model, certs.good, closing=True) as server:
        server.switch(certs.self_signed, after=7)  # readiness, the classes, five frames
        started = time.monotonic()
        code = webcam_main([str(clip), "--server", server.url, "--out", str(tmp_path / "seg.mkv"), "--no-hud",
                            "--inflight", "1", "--wait", "60"])
        took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and took < 20, (took, err)
    assert f"segment-webcam: POST {server.url}/segment: the server's TLS certificate is not accepted: self-signed " \
           "certificate (not retried" in err, err
    assert "waiting" not in err and "6 frames, 1 errors" in err, err  # five segmented, the sixth passed through


def test_a_webcam_outage_ends_at_once_on_a_certificate(self_signed: TlsServer) -> None:
    """A server back from an outage with a certificate that is not accepted (its readiness refused so). Before: the
    outage ended at once too, but said the server was not ready again within `--wait`."""
    with SegmentClient(self_signed.url) as client:
        outage = Outage(client.wait_ready, 60)
        outage.begin()
        started = time.monotonic()
        with pytest.raises(SegmentCertificateError) as info:
            outage.ended(block=True)
    assert time.monotonic() - started < 5 and self_signed.handshakes == 1
    assert str(info.value).startswith(f"GET {self_signed.url}/readyz: the server's TLS certificate is not accepted: "
                                      "self-signed certificate")
