"""Self-test of smtp_server.py, driving it as the Rust tests do: as a child
process, through real SMTP clients (smtplib, and pyspnego for NTLM).

Run: python3 -m pytest tests/servers -q
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import select
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import spnego

SERVER = Path(__file__).with_name("smtp_server.py")
USERS = "CORP:alice:S3cret!\nCORP:bob:hunter2\n"
MESSAGE = "From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, spool: Path):
        self.proc, self.port, self.spool = proc, port, spool

    def records(self) -> list:
        return [json.loads(p.read_text()) for p in sorted(self.spool.glob("*.json"), key=lambda p: int(p.stem))]

    def smtp(self, **kw) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=10, **kw)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        return rc


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def users(tmp_path):
    p = tmp_path / "users.txt"
    p.write_text(USERS)
    return p


@pytest.fixture
def start(tmp_path):
    """start(*flags) -> Server; every server is stopped with SIGTERM at the
    end and must have exited 0."""
    servers = []

    def _start(*flags: str, spool: Path | None = None) -> Server:
        spool = spool or tmp_path / f"spool{len(servers)}"
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--spool", str(spool), *flags],
            stdout=subprocess.PIPE, text=True,
        )
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "server did not print READY in time"
        line = proc.stdout.readline()
        assert line.startswith("READY "), f"unexpected first line {line!r} (rc={proc.poll()})"
        server = Server(proc, int(line.split()[1]), spool)
        servers.append(server)
        return server

    yield _start
    for s in servers:
        assert s.stop() == 0


def send(server: Server, client: smtplib.SMTP | None = None, rcpts=("b@example.com",), msg=MESSAGE):
    c = client or server.smtp()
    try:
        return c.sendmail("a@example.com", list(rcpts), msg)
    finally:
        if client is None:
            c.quit()


def tls_client_context(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    return ctx


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_and_clean_exit(start, sig):
    s = start()
    assert 0 < s.port < 65536
    with s.smtp() as c:
        assert c.noop()[0] == 250
    assert s.stop(sig) == 0
    assert s.proc.returncode == 0


def test_stops_cleanly_with_a_session_open(start):
    s = start()
    c = s.smtp()
    c.ehlo()
    c.mail("a@example.com")
    assert s.stop() == 0
    c.close()


def test_max_size(start):
    s = start("--max-size", "100")
    with s.smtp() as c:
        c.ehlo()
        assert c.esmtp_features["size"] == "100"
        assert c.docmd("MAIL", "FROM:<a@example.com> SIZE=101")[0] == 552
        # Without a SIZE declaration the limit bites after the content.
        c.mail("a@example.com")
        c.rcpt("b@example.com")
        assert c.data(MESSAGE + "x" * 100 + "\r\n")[0] == 552
    assert s.records() == []


def test_spool_records_plain_session(start):
    s = start()
    with s.smtp() as c:
        c.ehlo("client.test")
        assert not c.has_extn("auth"), "no AUTH advertised without --auth"
        assert not c.has_extn("starttls")
        refused = c.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE + ".leading dot\r\n")
        assert refused == {}
    (rec,) = s.records()
    assert rec["mail_from"] == "a@example.com"
    assert rec["rcpt_tos"] == ["b@example.com", "c@example.com"]
    # smtplib dot-stuffs the line; the spool has the message as un-stuffed.
    assert rec["data"] == MESSAGE + ".leading dot\r\n"
    assert base64.b64decode(rec["data_b64"]).decode() == rec["data"]
    assert rec["data_encoding"] == "utf-8"
    assert rec["auth_mechanism"] is None and rec["auth_user"] is None
    assert rec["tls"] is False
    assert rec["ehlo"] == "client.test"
    assert list(s.spool.iterdir()) == [s.spool / "1.json"], "no temp files left behind"


def test_spool_numbering_and_non_utf8(start, tmp_path):
    spool = tmp_path / "shared-spool"
    s = start(spool=spool)
    raw = b"Subject: caf\xe9\r\n\r\n\xff\xfe\r\n"
    send(s, msg=raw)
    send(s)
    assert s.stop() == 0
    # A restarted server on the same spool continues the numbering.
    s2 = start(spool=spool)
    send(s2)
    assert sorted(p.name for p in spool.glob("*.json")) == ["1.json", "2.json", "3.json"]
    first = json.loads((spool / "1.json").read_text())
    assert first["data_encoding"] == "latin-1"
    assert first["data"] == raw.decode("latin-1")
    assert base64.b64decode(first["data_b64"]) == raw


# ---------------------------------------------------------------- AUTH


def test_only_requested_mechanisms_advertised(start, users):
    s = start("--auth", "plain,CRAM-MD5", "--users", str(users))
    with s.smtp() as c:
        c.ehlo()
        assert sorted(c.esmtp_features["auth"].split()) == ["CRAM-MD5", "PLAIN"]
        assert c.docmd("AUTH", "LOGIN")[0] == 504
        # Mechanism names are case-insensitive (RFC 4954).
        plain = base64.b64encode(b"\0alice\0S3cret!").decode()
        assert c.docmd("AUTH", "plain " + plain)[0] == 235


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_password_mechanisms(start, users, mech):
    s = start("--auth", mech, "--users", str(users), "--require-auth")
    method = {"PLAIN": "auth_plain", "LOGIN": "auth_login", "CRAM-MD5": "auth_cram_md5"}[mech]
    with s.smtp() as c:
        c.ehlo()
        c.user, c.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.auth(mech, getattr(c, method))
        assert e.value.smtp_code == 535
        assert e.value.smtp_error.startswith(b"5.7.8")
        # The session survives the failure; MAIL is still refused...
        assert c.docmd("MAIL", "FROM:<a@example.com>")[0] == 530
        # ...and a correct login on the same connection works.
        c.user, c.password = "alice", "S3cret!"
        assert c.auth(mech, getattr(c, method))[0] == 235
        send(s, c)
    (rec,) = s.records()
    assert (rec["auth_mechanism"], rec["auth_user"]) == (mech, "alice")


def test_cram_md5_challenge_is_unique_and_checked(start, users):
    s = start("--auth", "CRAM-MD5", "--users", str(users))
    challenges = []
    for _ in range(2):
        with s.smtp() as c:
            c.ehlo()
            code, b64 = c.docmd("AUTH", "CRAM-MD5")
            assert code == 334
            challenge = base64.b64decode(b64)
            assert challenge.startswith(b"<") and challenge.endswith(b">") and b"@" in challenge
            challenges.append(challenge)
            digest = hmac.new(b"hunter2", challenge, hashlib.md5).hexdigest()
            code, _ = c.docmd(base64.b64encode(b"bob " + digest.encode()).decode())
            assert code == 235
    assert challenges[0] != challenges[1]


def test_require_auth_answers_530(start, users):
    s = start("--auth", "PLAIN", "--users", str(users), "--require-auth")
    with s.smtp() as c:
        c.ehlo()
        code, text = c.docmd("MAIL", "FROM:<a@example.com>")
        assert code == 530, text


def ntlm_exchange(c: smtplib.SMTP, user: str, password: str, initial_response: bool):
    """MS-SMTPNTLM by hand, returning the final (code, text)."""
    ctx = spnego.client(user, password, hostname="localhost", service="smtp", protocol="ntlm")
    negotiate = base64.b64encode(ctx.step()).decode()
    if initial_response:
        code, text = c.docmd("AUTH", "NTLM " + negotiate)
    else:
        code, text = c.docmd("AUTH", "NTLM")
        assert (code, text) == (334, b"NTLM supported")
        code, text = c.docmd(negotiate)
    assert code == 334, text
    authenticate = ctx.step(base64.b64decode(text))
    return c.docmd(base64.b64encode(authenticate).decode())


@pytest.mark.parametrize("initial_response", [False, True])
def test_ntlm(start, users, initial_response):
    s = start("--auth", "NTLM", "--users", str(users), "--require-auth")
    with s.smtp() as c:
        c.ehlo()
        assert c.esmtp_features["auth"].split() == ["NTLM"]
        assert ntlm_exchange(c, "CORP\\alice", "nope", initial_response) == (
            535, b"5.7.3 Authentication unsuccessful")
        assert ntlm_exchange(c, "CORP\\mallory", "S3cret!", initial_response)[0] == 535
        assert ntlm_exchange(c, "CORP\\alice", "S3cret!", initial_response) == (
            235, b"2.7.0 Authentication successful")
        send(s, c)
    (rec,) = s.records()
    assert (rec["auth_mechanism"], rec["auth_user"]) == ("NTLM", "CORP\\alice")


def test_ntlm_long_authenticate_line(start, tmp_path):
    # A long user name makes the base64 AUTHENTICATE line longer than the
    # 1001-byte SMTP line limit; real servers accept it, so must this one.
    user = "u" * 400
    users = tmp_path / "long-users.txt"
    users.write_text(f"CORP:{user}:pw\n")
    s = start("--auth", "NTLM", "--users", str(users))
    with s.smtp() as c:
        c.ehlo()
        assert ntlm_exchange(c, f"CORP\\{user}", "pw", False)[0] == 235


def test_ntlm_garbage_token_is_535_and_cancel_is_501(start, users):
    s = start("--auth", "NTLM", "--users", str(users))
    with s.smtp() as c:
        c.ehlo()
        assert c.docmd("AUTH", "NTLM " + base64.b64encode(b"not ntlm").decode())[0] == 535
        assert c.docmd("AUTH", "NTLM")[0] == 334
        assert c.docmd("*")[0] == 501
        assert c.noop()[0] == 250


# ---------------------------------------------------------------- TLS


def test_starttls(start, users, cert):
    s = start("--tls", "starttls", "--cert", str(cert[0]), "--key", str(cert[1]),
              "--auth", "PLAIN", "--users", str(users))
    with s.smtp() as c:
        c.ehlo()
        assert c.has_extn("starttls")
        c.starttls(context=tls_client_context(cert))
        c.ehlo("after-tls.test")
        assert not c.has_extn("starttls")
        c.login("bob", "hunter2")
        send(s, c)
    (rec,) = s.records()
    assert rec["tls"] is True
    assert rec["ehlo"] == "after-tls.test"
    assert rec["auth_user"] == "bob"


def test_implicit_tls(start, cert):
    s = start("--tls", "implicit", "--cert", str(cert[0]), "--key", str(cert[1]))
    with smtplib.SMTP_SSL("127.0.0.1", s.port, context=tls_client_context(cert), timeout=10) as c:
        c.ehlo()
        assert not c.has_extn("starttls")
        send(s, c)
    (rec,) = s.records()
    assert rec["tls"] is True


# ---------------------------------------------------------------- faults


def test_fail_rcpt_partial(start):
    s = start("--fail-rcpt", "bad@example.com", "--fail-rcpt", "worse@example.com")
    with s.smtp() as c:
        refused = c.sendmail("a@example.com", ["b@example.com", "Bad@example.com"], MESSAGE)
    assert refused == {
        "Bad@example.com": (550, b"5.1.1 <Bad@example.com>: Recipient address rejected: User unknown")}
    (rec,) = s.records()
    assert rec["rcpt_tos"] == ["b@example.com"]
    # Every recipient refused: smtplib sends no DATA, nothing spooled.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(s, rcpts=["worse@example.com"])
    assert len(s.records()) == 1


def test_tempfail_first_counts_across_sessions(start):
    s = start("--tempfail-first", "2")
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(s)
        assert (e.value.smtp_code, e.value.smtp_error) == (451, b"4.3.0 Temporary local problem, try again later")
        assert s.records() == []
    send(s)
    assert len(s.records()) == 1


def test_disconnect_in_data_first(start, users, cert):
    s = start("--disconnect-in-data-first", "2", "--tls", "starttls",
              "--cert", str(cert[0]), "--key", str(cert[1]))
    # Once in clear text, once inside STARTTLS.
    for use_tls in (False, True):
        c = s.smtp()
        if use_tls:
            c.starttls(context=tls_client_context(cert))
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError, ssl.SSLError)):
            send(s, c)
        c.close()
        assert s.records() == []
    send(s)
    assert len(s.records()) == 1


def test_faults_apply_in_sequence(start):
    s = start("--disconnect-in-data-first", "1", "--tempfail-first", "1")
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
        send(s)
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(s)
    assert e.value.smtp_code == 451
    send(s)
    assert len(s.records()) == 1


def test_tempfail_every_nth_message(start):
    s = start("--tempfail-every", "3")
    codes = []
    for _ in range(7):
        try:
            send(s)
            codes.append(250)
        except smtplib.SMTPDataError as e:
            codes.append(e.smtp_code)
    assert codes == [250, 250, 451, 250, 250, 451, 250]
    assert len(s.records()) == 5


def test_stall_first_never_replies_then_recovers(start):
    s = start("--stall-first", "1")
    c = smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=1)
    with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected, OSError)):
        send(s, c)
    c.close()
    assert s.records() == []
    send(s)
    assert len(s.records()) == 1


def test_greeting_421(start):
    s = start("--greeting-421")
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError) as e:
            s.smtp()
        assert (e.value.smtp_code, e.value.smtp_error) == (421, b"4.3.2 Service not available")


def test_reject_all_data(start):
    s = start("--reject-all-data")
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(s)
    assert (e.value.smtp_code, e.value.smtp_error) == (554, b"5.7.1 Message rejected")
    assert s.records() == []


def test_bad_flags_exit_nonzero(tmp_path):
    r = subprocess.run([sys.executable, str(SERVER), "--auth", "GSSAPI"], capture_output=True, text=True)
    assert r.returncode == 2 and "GSSAPI" in r.stderr and r.stdout == ""
    r = subprocess.run([sys.executable, str(SERVER), "--tls", "implicit"], capture_output=True, text=True)
    assert r.returncode == 2
