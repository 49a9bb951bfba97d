#!/usr/bin/env python3
"""A real SMTP server for notigate's integration tests.

aiosmtpd is the SMTP engine; this file only adds what the tests need on top:
AUTH (PLAIN, LOGIN, CRAM-MD5, and a real NTLM check through pyspnego), TLS
(STARTTLS or implicit), a JSON spool of accepted messages, and fault
injection for retry tests.

Start-up contract: once listening it prints exactly one line, ``READY <port>``,
to stdout; everything else (logs) goes to stderr. SIGTERM/SIGINT stop it with
exit status 0. See README.md beside this file for the flags and the spool
format.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

log = logging.getLogger("smtp_server")

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "NTLM")

# Reply texts the Rust tests match on; keep them in one place.
REPLY_RCPT_UNKNOWN = "550 5.1.1 <{addr}>: Recipient address rejected: User unknown"
REPLY_TEMPFAIL = "451 4.3.0 Temporary local problem, try again later"
REPLY_GREETING_421 = "421 4.3.2 Service not available"
REPLY_DATA_REJECTED = "554 5.7.1 Message rejected"
REPLY_AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
REPLY_NTLM_FAILED = "535 5.7.3 Authentication unsuccessful"  # MS-SMTPNTLM wording

# aiosmtpd reads AUTH continuation lines with its 1001-byte SMTP line limit.
# An NTLM AUTHENTICATE message grows with the user/domain/host names and the
# AV pairs (target info is echoed back, plus channel bindings and the SPN), and
# real servers (Postfix, Exchange) accept longer SASL lines, so the limit is
# raised while reading SASL responses.
SASL_LINE_LIMIT = 64 * 1024


# --------------------------------------------------------------------------
# Accounts


@dataclass(frozen=True)
class Account:
    domain: str
    user: str
    password: str


def load_users(path: Path) -> List[Account]:
    """Parse ``DOMAIN:user:password`` lines (pyspnego's NTLM_USER_FILE format).

    pyspnego splits on every ':' and only takes 3-field lines, so a password
    with a ':' would silently not work for NTLM; refuse such files up front.
    """
    accounts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(":")
        if len(fields) != 3:
            raise SystemExit(f"{path}:{lineno}: expected DOMAIN:user:password")
        accounts.append(Account(*fields))
    return accounts


@dataclass(frozen=True)
class AuthInfo:
    """Stored as ``session.auth_data`` after a successful AUTH."""

    mechanism: str
    user: str


# --------------------------------------------------------------------------
# Spool


class Spool:
    """Writes each accepted message as ``<n>.json``, atomically.

    Numbering continues after the highest number already in the directory, so
    a test that restarts the server on the same spool never loses a record.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        existing = [int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit()]
        self._next = max(existing, default=0) + 1

    def write(self, record: dict) -> Path:
        n = self._next
        self._next += 1
        final = self.directory / f"{n}.json"
        # The temp name does not end in .json, so a reader globbing *.json
        # never sees a half-written file.
        tmp = self.directory / f".{n}.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, final)
        return final


def clean_text(s: Optional[str]) -> Optional[str]:
    """aiosmtpd decodes SMTPUTF8 arguments with surrogateescape; lone
    surrogates would make the JSON unreadable for serde_json, so replace
    them."""
    if s is None:
        return None
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --------------------------------------------------------------------------
# The SMTP protocol object and its handler


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with two changes: an optional 421 greeting, and
    case-insensitive AUTH mechanism names.
    """

    def __init__(self, handler: "Handler", *, greeting_421: bool, **kwargs):
        super().__init__(handler, **kwargs)
        self.greeting_421 = greeting_421

    async def _handle_client(self) -> None:
        # aiosmtpd has no hook before its 220 greeting, so the per-connection
        # coroutine that sends it is wrapped.
        if self.greeting_421:
            await self.push(REPLY_GREETING_421)
            self.transport.close()
            return
        await super()._handle_client()

    @syntax("AUTH <mechanism>")  # keeps HELP AUTH working
    async def smtp_AUTH(self, arg: str) -> None:
        # RFC 4954: mechanism names are case-insensitive, but aiosmtpd looks
        # them up as given ("AUTH plain" would get 504).
        if arg:
            mechanism, sep, rest = arg.partition(" ")
            arg = mechanism.upper() + sep + rest
        await super().smtp_AUTH(arg)


async def sasl_challenge(server: SMTP, challenge: bytes, encode_to_b64: bool = True):
    """``server.challenge_auth`` (sends ``334 ...``, handles ``*`` and bad
    base64 itself, returning MISSING) with the longer line limit."""
    reader = server._reader
    old_limit = reader._limit
    reader._limit = max(old_limit, SASL_LINE_LIMIT)
    try:
        return await server.challenge_auth(challenge, encode_to_b64=encode_to_b64)
    finally:
        reader._limit = old_limit


class Handler:
    """aiosmtpd event handler: auth mechanisms, fault injection, spooling.

    Fault counters live here, on the one handler shared by every connection,
    so "the first N" counts across sessions.
    """

    def __init__(self, args: argparse.Namespace, accounts: List[Account], spool: Optional[Spool]):
        self.accounts = accounts
        self.spool = spool
        self.hostname = args.hostname
        self.fail_rcpt = {a.lower() for a in args.fail_rcpt}
        self.disconnects_left = args.disconnect_in_data_first
        self.tempfails_left = args.tempfail_first
        self.stalls_left = args.stall_first
        self.tempfail_every = args.tempfail_every
        self._data_count = 0
        self.reject_all_data = args.reject_all_data
        self.advertise_auth = bool(args.auth)
        self.pipelining = args.pipelining
        self._cram_counter = itertools.count(1)

    # -- credentials -------------------------------------------------------

    def passwords_for(self, user: str) -> List[str]:
        # The DOMAIN column only matters to NTLM.
        return [a.password for a in self.accounts if a.user == user]

    def authenticate(self, server, session, envelope, mechanism: str, auth_data) -> AuthResult:
        """aiosmtpd ``authenticator`` callback, used by the built-in PLAIN and
        LOGIN. A failed AuthResult with handled=False makes aiosmtpd answer
        535 5.7.8 and keep the session."""
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if any(hmac.compare_digest(password.encode(), p.encode()) for p in self.passwords_for(user)):
            return AuthResult(success=True, auth_data=AuthInfo(mechanism, user))
        log.info("%s: bad credentials for %r", mechanism, user)
        return AuthResult(success=False, handled=False)

    # -- extra AUTH mechanisms (aiosmtpd maps auth_CRAM__MD5 to "CRAM-MD5") --

    async def auth_CRAM__MD5(self, server: SMTP, args: List[str]) -> AuthResult:
        """RFC 2195. The challenge is a unique msg-id-like string."""
        if len(args) > 1:
            # CRAM-MD5 has no initial response: the server speaks first.
            await server.push("501 5.5.2 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{os.getpid()}.{next(self._cram_counter)}.{time.time_ns()}@{self.hostname}>"
        response = await sasl_challenge(server, challenge.encode())
        if response is MISSING:
            return AuthResult(success=False, handled=True)  # 501 already sent
        user_b, sep, digest_b = response.rpartition(b" ")
        if not sep:
            await server.push("501 5.5.2 Malformed CRAM-MD5 response")
            return AuthResult(success=False, handled=True)
        user = user_b.decode("utf-8", "replace")
        digest = digest_b.decode("ascii", "replace").lower()
        for password in self.passwords_for(user):
            expected = hmac.new(password.encode(), challenge.encode(), hashlib.md5).hexdigest()
            if hmac.compare_digest(expected, digest):
                return AuthResult(success=True, auth_data=AuthInfo("CRAM-MD5", user))
        log.info("CRAM-MD5: bad credentials for %r", user)
        return AuthResult(success=False, handled=False, message=REPLY_AUTH_INVALID)

    async def auth_NTLM(self, server: SMTP, args: List[str]) -> AuthResult:
        """MS-SMTPNTLM, checked for real by pyspnego's NTLM acceptor (which
        reads the accounts from $NTLM_USER_FILE)."""
        import spnego  # imported lazily: only needed when NTLM is offered
        from spnego.exceptions import SpnegoError

        def failed() -> AuthResult:
            return AuthResult(success=False, handled=False, message=REPLY_NTLM_FAILED)

        if len(args) > 1:
            # NEGOTIATE sent as an initial response on the AUTH line.
            try:
                negotiate = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            negotiate = await sasl_challenge(server, b"NTLM supported", encode_to_b64=False)
            if negotiate is MISSING:
                return AuthResult(success=False, handled=True)

        acceptor = spnego.server(protocol="ntlm")
        try:
            challenge = acceptor.step(negotiate)
        except (SpnegoError, ValueError, struct.error) as e:
            log.info("NTLM: bad NEGOTIATE: %s", e)
            return failed()

        authenticate = await sasl_challenge(server, challenge)
        if authenticate is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            acceptor.step(authenticate)
        except (SpnegoError, ValueError, struct.error) as e:
            # Wrong password, unknown user, bad MIC, malformed token...
            log.info("NTLM: rejected: %s", e)
            return failed()
        if not acceptor.complete:
            return failed()
        return AuthResult(success=True, auth_data=AuthInfo("NTLM", acceptor.client_principal))

    # -- SMTP hooks ----------------------------------------------------------

    async def handle_EHLO(self, server, session: Session, envelope, hostname: str, responses: List[str]):
        # With auth_require_tls=False aiosmtpd always adds an "AUTH" line,
        # even an empty one when every mechanism is excluded; drop it then.
        if not self.advertise_auth:
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        if self.pipelining:
            # aiosmtpd reads commands one line at a time, so pipelined
            # groups work; it just does not say so.
            responses = [responses[0], "250-PIPELINING"] + responses[1:]
        # Supplying this hook means aiosmtpd no longer records the name.
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, rcpt_options: List[str]):
        if address.lower() in self.fail_rcpt:
            return REPLY_RCPT_UNKNOWN.format(addr=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
        # Faults apply in sequence: first the disconnects, then the stalls,
        # then the temporary failures, then normal behaviour.
        self._data_count += 1
        if self.disconnects_left > 0:
            self.disconnects_left -= 1
            log.info("dropping the connection after DATA (fault injection)")
            await drop_connection(server)
        if self.stalls_left > 0:
            self.stalls_left -= 1
            log.info("stalling after DATA (fault injection)")
            await stall_until_closed()
        if self.tempfails_left > 0:
            self.tempfails_left -= 1
            return REPLY_TEMPFAIL
        if self.tempfail_every and self._data_count % self.tempfail_every == 0:
            return REPLY_TEMPFAIL
        if self.reject_all_data:
            return REPLY_DATA_REJECTED

        raw: bytes = envelope.original_content
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = raw.decode("latin-1"), "latin-1"
        auth: Optional[AuthInfo] = session.auth_data if session.authenticated else None
        record = {
            "mail_from": clean_text(envelope.mail_from),
            "rcpt_tos": [clean_text(r) for r in envelope.rcpt_tos],
            "data": text,
            "data_encoding": encoding,
            "data_b64": base64.b64encode(raw).decode("ascii"),
            "auth_mechanism": auth.mechanism if auth else None,
            "auth_user": auth.user if auth else None,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "ehlo": clean_text(session.host_name),
            "esmtp": bool(session.extended_smtp),
            "mail_options": envelope.mail_options,
            "peer": list(session.peer) if session.peer else None,
            "received_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        if self.spool is not None:
            path = self.spool.write(record)
            log.info("spooled %s", path)
        return "250 2.0.0 OK: queued"


async def drop_connection(server: SMTP) -> None:
    """Close the TCP connection abruptly (RST, no reply, no TLS close_notify)
    and never return: connection_lost() then cancels the session task, which
    aiosmtpd treats as a normal lost connection."""
    sock = server.transport.get_extra_info("socket")
    if sock is not None:
        # Linger on with timeout 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.transport.abort()
    await asyncio.get_running_loop().create_future()


async def stall_until_closed() -> None:
    """Never reply: the session hangs until the client gives up and closes
    the connection (connection_lost() then cancels the session task)."""
    await asyncio.get_running_loop().create_future()


# --------------------------------------------------------------------------
# Start-up


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--hostname", default="localhost",
                   help="name used in the greeting and in CRAM-MD5 challenges (default localhost)")
    p.add_argument("--tls", choices=("none", "starttls", "implicit"), default="none")
    p.add_argument("--cert", type=Path, help="PEM certificate (needed with --tls starttls|implicit)")
    p.add_argument("--key", type=Path, help="PEM private key (needed with --tls starttls|implicit)")
    p.add_argument("--auth", default="",
                   help="comma list of mechanisms to advertise and accept: " + ", ".join(MECHANISMS))
    p.add_argument("--users", type=Path, help="accounts file, lines DOMAIN:user:password")
    p.add_argument("--require-auth", action="store_true", help="MAIL/RCPT/DATA before AUTH get 530")
    p.add_argument("--spool", type=Path, help="directory receiving <n>.json per accepted message")
    p.add_argument("--max-size", type=int, default=32 * 1024 * 1024,
                   help="SIZE limit in bytes (default 32 MiB; 0 = none)")
    p.add_argument("--fail-rcpt", action="append", default=[], metavar="ADDR",
                   help="RCPT TO for ADDR gets 550 5.1.1 (repeatable)")
    p.add_argument("--tempfail-first", type=int, default=0, metavar="N",
                   help="the first N DATA commands get 451 4.3.0")
    p.add_argument("--disconnect-in-data-first", type=int, default=0, metavar="N",
                   help="drop the connection after the first N messages' content, before replying")
    p.add_argument("--tempfail-every", type=int, default=0, metavar="N",
                   help="every Nth message (counted across sessions, faulted ones included) gets 451 4.3.0")
    p.add_argument("--stall-first", type=int, default=0, metavar="N",
                   help="the first N messages: no reply after the content until the client closes")
    p.add_argument("--greeting-421", action="store_true", help="greet every connection with 421 and close it")
    p.add_argument("--reject-all-data", action="store_true", help="DATA gets 554 5.7.1")
    p.add_argument("--pipelining", action="store_true", help="advertise PIPELINING (RFC 2920)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-v info, -vv debug)")
    args = p.parse_args(argv)

    mechanisms = [m.strip().upper() for m in args.auth.split(",") if m.strip()]
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown:
        p.error(f"unknown --auth mechanism(s): {', '.join(unknown)}")
    args.auth = mechanisms
    if mechanisms and not args.users:
        p.error("--auth needs --users")
    if args.tls != "none" and not (args.cert and args.key):
        p.error("--tls starttls|implicit needs --cert and --key")
    return args


def make_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def serve(args: argparse.Namespace) -> None:
    accounts = load_users(args.users) if args.users else []
    if "NTLM" in args.auth:
        # pyspnego's acceptor reads the accounts from this variable.
        os.environ["NTLM_USER_FILE"] = str(args.users.resolve())
    spool = Spool(args.spool) if args.spool else None
    handler = Handler(args, accounts, spool)

    tls_context = make_tls_context(args.cert, args.key) if args.tls != "none" else None
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            greeting_421=args.greeting_421,
            hostname=args.hostname,
            loop=loop,
            data_size_limit=args.max_size or None,
            enable_SMTPUTF8=True,
            # STARTTLS is offered only in starttls mode; in implicit mode the
            # socket itself is TLS (ssl= below).
            tls_context=tls_context if args.tls == "starttls" else None,
            auth_required=args.require_auth,
            auth_require_tls=False,
            authenticator=handler.authenticate,
            # Built-in PLAIN/LOGIN and the handler's mechanisms are all
            # registered; hide those not asked for.
            auth_exclude_mechanism=[m for m in MECHANISMS if m not in args.auth],
        )

    server = await loop.create_server(
        factory,
        host=args.host,
        port=args.port,
        ssl=tls_context if args.tls == "implicit" else None,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    print(f"READY {port}", flush=True)
    log.info("listening on %s:%d (tls=%s, auth=%s)", args.host, port, args.tls, ",".join(args.auth) or "-")
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aiosmtpd warns (and logs) that AUTH without TLS is insecure, and logs a
    # deprecation warning on every successful AUTH; both are expected here.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").addFilter(
        lambda r: "login_data is deprecated" not in r.getMessage()
        and "auth_require_tls == False" not in r.getMessage()
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
