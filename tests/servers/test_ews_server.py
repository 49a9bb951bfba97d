"""Self-test of the fake EWS server (ews_server.py) against a real EWS client.

exchangelib (PyPI) talks to the fake with Basic and NTLM credentials, over HTTP and
HTTPS, and must see exactly what it would see from Exchange: a recorded send, a
refused password, ErrorServerBusy with its back-off, ErrorSendAsDenied,
ErrorInvalidRecipients. Hand-written requests cover what exchangelib never sends
wrongly (schema order, server version) and the NTLM connection rules.

Run: python3 -m pytest tests/servers/test_ews_server.py -q
Needs: pip install -r tests/servers/requirements-ews.txt ; openssl on PATH.
"""

from __future__ import annotations

import base64
import glob
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import pytest
import spnego
from exchangelib import (
    BASIC,
    DELEGATE,
    NTLM,
    Account,
    Build,
    Configuration,
    Credentials,
    FileAttachment,
    HTMLBody,
    Mailbox,
    Message,
    Version,
)
from exchangelib.errors import (
    ErrorInvalidRecipients,
    ErrorSchemaValidation,
    ErrorSendAsDenied,
    ErrorServerBusy,
    TransportError,
    UnauthorizedError,
)
from exchangelib.protocol import BaseProtocol, NoVerifyHTTPAdapter
from exchangelib.services import CreateItem
from lxml import etree
from spnego.exceptions import NegotiateOptions

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "ews_server.py")
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
E_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"

ACCOUNT = "alice@corp.example.com"
USERS = "CORP:alice:Secret123\nCORP:bob:Hunter2!\n"

# The fake signs its certificate itself; exchangelib is told to accept it.
BaseProtocol.HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter
pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")


class Fake:
    def __init__(self, proc: subprocess.Popen, port: int, spool: str, tls: bool):
        self.proc, self.port, self.spool, self.tls = proc, port, spool, tls

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/EWS/Exchange.asmx"

    def records(self) -> List[Dict[str, Any]]:
        files = [f for f in glob.glob(os.path.join(self.spool, "*.json")) if not f.endswith("stats.json")]
        files.sort(key=lambda p: int(os.path.basename(p)[:-5]))
        return [json.load(open(f, encoding="utf-8")) for f in files]

    def stats(self) -> Dict[str, Any]:
        with open(os.path.join(self.spool, "stats.json"), encoding="utf-8") as f:
            return json.load(f)

    def conn(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                               context=ssl._create_unverified_context())
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return {"cert": cert, "key": key}


@pytest.fixture
def fake(tmp_path, tls_files):
    started: List[Fake] = []

    def start(*args: str, tls: bool = False) -> Fake:
        users = tmp_path / "users.txt"
        users.write_text(USERS)
        spool = tmp_path / f"spool{len(started)}"
        cmd = [sys.executable, SERVER, "--host", "127.0.0.1", "--port", "0", "--users", str(users),
               "--spool", str(spool), "--quiet", *args]
        if tls:
            cmd += ["--tls", "--cert", tls_files["cert"], "--key", tls_files["key"]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() is not None else "")
        f = Fake(proc, int(line.split()[1]), str(spool), tls)
        started.append(f)
        return f

    yield start
    for f in started:
        f.proc.send_signal(signal.SIGTERM)
        try:
            rc = f.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            f.proc.kill()
            raise
        assert rc == 0, f.proc.stderr.read()


def account(f: Fake, auth: str, user: str = "CORP\\alice", password: str = "Secret123") -> Account:
    cfg = Configuration(
        service_endpoint=f.url,
        credentials=Credentials(user, password),
        auth_type={"basic": BASIC, "ntlm": NTLM}[auth],
        version=Version(build=Build(15, 1, 2507, 6), api_version="Exchange2016"),
        max_connections=1,
    )
    return Account(ACCOUNT, config=cfg, autodiscover=False, access_type=DELEGATE)


def soap(inner: str, version: Optional[str] = "Exchange2016") -> bytes:
    hdr = f'<soap:Header><t:RequestServerVersion Version="{version}"/></soap:Header>' if version else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<soap:Envelope xmlns:soap="{SOAP_NS}" xmlns:m="{M_NS}" xmlns:t="{T_NS}">\n'
        f"  {hdr}\n  <soap:Body>\n    {inner}\n  </soap:Body>\n</soap:Envelope>\n"
    ).encode()


TO = "<t:ToRecipients><t:Mailbox><t:EmailAddress>bob@example.org</t:EmailAddress></t:Mailbox></t:ToRecipients>"


def create_item(message_children: str, disposition: str = "SendOnly") -> bytes:
    return soap(f'<m:CreateItem MessageDisposition="{disposition}"><m:Items><t:Message>'
                f"{message_children}</t:Message></m:Items></m:CreateItem>")


def post(f: Fake, body: bytes, headers: Optional[Dict[str, str]] = None, path: str = "/EWS/Exchange.asmx",
         conn: Optional[http.client.HTTPConnection] = None):
    c = conn or f.conn()
    h = {"Content-Type": "text/xml; charset=utf-8"}
    h.update(headers or {})
    c.request("POST", path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    return r, data


def fault_of(data: bytes) -> Dict[str, Any]:
    root = etree.fromstring(data)
    fault = root.find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    assert fault is not None, data
    detail = fault.find("detail")
    return {
        "faultcode": fault.findtext("faultcode"),
        "faultstring": fault.findtext("faultstring"),
        "code": detail.findtext(f"{{{E_NS}}}ResponseCode"),
        "message": detail.findtext(f"{{{E_NS}}}Message"),
        "fault": fault,
    }


# ------------------------------------------------------------------------------------------
# exchangelib, a real EWS client
# ------------------------------------------------------------------------------------------

def test_basic_send_is_recorded(fake):
    f = fake("--auth", "basic", "--account-address", ACCOUNT)
    acc = account(f, "basic")
    m = Message(account=acc, subject="Отчёт за май", body=HTMLBody("<p>Привет</p>"),
                to_recipients=[Mailbox(email_address="bob@example.org", name="Bob")],
                cc_recipients=["carol@example.org"], bcc_recipients=["dave@example.org"],
                reply_to=["replies@example.org"], importance="High")
    m.attach(FileAttachment(name="report.csv", content=b"a,b\n1,2\n", content_type="text/csv"))
    m.attach(FileAttachment(name="logo.png", content=b"\x89PNG...", content_type="image/png",
                            content_id="logo@notigate", is_inline=True))
    m.send(save_copy=False)

    (rec,) = f.records()
    assert rec["operation"] == "CreateItem"
    assert rec["response_code"] == "NoError" and rec["http_status"] == 200
    assert rec["server_version"] == "Exchange2016"
    assert rec["auth_scheme"] == "basic" and rec["auth_user"] == "CORP\\alice"
    assert rec["message_disposition"] == "SendOnly" and rec["saved_item_folder"] is None
    assert rec["subject"] == "Отчёт за май"
    assert rec["body_type"] == "HTML" and rec["body"] == "<p>Привет</p>"
    assert rec["importance"] == "High"
    assert rec["to"] == [{"name": "Bob", "address": "bob@example.org", "routing_type": "SMTP"}]
    assert [r["address"] for r in rec["cc"]] == ["carol@example.org"]
    assert [r["address"] for r in rec["bcc"]] == ["dave@example.org"]
    assert [r["address"] for r in rec["reply_to"]] == ["replies@example.org"]
    att = {a["name"]: a for a in rec["attachments"]}
    assert base64.b64decode(att["report.csv"]["content_b64"]) == b"a,b\n1,2\n"
    assert att["report.csv"]["content_type"] == "text/csv"
    assert att["logo.png"]["content_id"] == "logo@notigate" and att["logo.png"]["is_inline"] is True
    # exchangelib's element order is the schema order the Rust client has to produce too
    assert rec["element_order"][:4] == ["Subject", "Sensitivity", "Body", "Attachments"]
    assert rec["element_order"].index("ToRecipients") < rec["element_order"].index("ReplyTo")
    assert "<t:Message>" in rec["raw"]
    stats = f.stats()
    assert stats["auth_failures"] == 0 and stats["soap_requests"] == 1


def test_ntlm_send_over_https_with_extended_protection(fake):
    f = fake("--auth", "ntlm", "--account-address", ACCOUNT, "--extended-protection", "required", tls=True)
    acc = account(f, "ntlm")
    Message(account=acc, subject="ntlm", body="plain text", to_recipients=["bob@example.org"]).send(save_copy=False)
    (rec,) = f.records()
    assert rec["auth_scheme"] == "ntlm" and rec["auth_user"] == "CORP\\alice"
    assert rec["tls"] is True and rec["body_type"] == "Text" and rec["response_code"] == "NoError"
    stats = f.stats()
    # one 401 without credentials, one 401 carrying the CHALLENGE, then the authenticated request
    assert stats["auth_challenges"] == 1 and stats["ntlm_authenticated"] == 1 and stats["auth_failures"] == 0


def test_ntlm_send_over_http_user_without_domain(fake):
    f = fake("--auth", "ntlm")
    acc = account(f, "ntlm", user="alice")
    Message(account=acc, subject="no domain", body="x", to_recipients=["bob@example.org"]).send(save_copy=False)
    (rec,) = f.records()
    assert rec["auth_user"] == "CORP\\alice"


@pytest.mark.parametrize("auth", ["basic", "ntlm"])
def test_wrong_password_is_refused(fake, auth):
    f = fake("--auth", auth)
    acc = account(f, auth, password="wrong")
    with pytest.raises(UnauthorizedError):
        Message(account=acc, subject="x", body="x", to_recipients=["bob@example.org"]).send(save_copy=False)
    assert f.records() == []
    assert f.stats()["auth_failures"] >= 1


def test_busy_first_surfaces_server_busy_with_backoff(fake):
    f = fake("--auth", "basic", "--busy-first", "1", "--backoff-ms", "1234")
    acc = account(f, "basic")
    msg = Message(account=acc, subject="busy", body="x", to_recipients=["bob@example.org"])
    with pytest.raises(ErrorServerBusy) as ei:
        msg.send(save_copy=False)
    assert ei.value.back_off == pytest.approx(1.234)
    Message(account=acc, subject="busy", body="x", to_recipients=["bob@example.org"]).send(save_copy=False)
    recs = f.records()
    assert [r["response_code"] for r in recs] == ["ErrorServerBusy", "NoError"]
    assert recs[0]["http_status"] == 500


def test_send_as_denied_and_allowed(fake):
    f = fake("--auth", "basic", "--account-address", ACCOUNT, "--send-as", "noreply@corp.example.com")
    acc = account(f, "basic")
    with pytest.raises(ErrorSendAsDenied) as ei:
        Message(account=acc, subject="x", body="x", author=Mailbox(email_address="ceo@corp.example.com"),
                to_recipients=["bob@example.org"]).send(save_copy=False)
    assert "does not have the right to send mail on behalf of the specified sending account" in str(ei.value)
    Message(account=acc, subject="x", body="x", author=Mailbox(email_address="NoReply@corp.example.com", name="Robot"),
            to_recipients=["bob@example.org"]).send(save_copy=False)
    denied, allowed = f.records()
    assert denied["response_code"] == "ErrorSendAsDenied" and denied["http_status"] == 200
    assert denied["from"]["address"] == "ceo@corp.example.com"
    assert allowed["response_code"] == "NoError"
    assert allowed["from"] == {"name": "Robot", "address": "NoReply@corp.example.com", "routing_type": "SMTP"}
    assert "From" in allowed["element_order"]


def test_invalid_recipient(fake):
    f = fake("--auth", "basic", "--invalid-recipient", "nobody@example.org")
    acc = account(f, "basic")
    with pytest.raises(ErrorInvalidRecipients):
        Message(account=acc, subject="x", body="x", to_recipients=["bob@example.org", "nobody@example.org"]).send(
            save_copy=False)
    assert f.records()[0]["response_code"] == "ErrorInvalidRecipients"


def test_get_folder_and_send_and_save_copy(fake):
    f = fake("--auth", "ntlm", "--account-address", ACCOUNT)
    acc = account(f, "ntlm")
    assert acc.msg_folder_root.name == "Top of Information Store"
    Message(account=acc, subject="keep a copy", body="x", to_recipients=["bob@example.org"]).send()  # save_copy
    recs = f.records()
    folders = [r["folders"] for r in recs if r["operation"] == "GetFolder"]
    assert ["msgfolderroot"] in folders and all(r["response_code"] == "NoError" for r in recs)
    send = [r for r in recs if r["operation"] == "CreateItem"][-1]
    assert send["message_disposition"] == "SendAndSaveCopy" and send["saved_item_folder"] == "sentitems"
    assert send["response_code"] == "NoError"


def test_http500_first_is_an_iis_page(fake):
    f = fake("--auth", "basic", "--http500-first", "1")
    acc = account(f, "basic")
    with pytest.raises(TransportError):
        Message(account=acc, subject="x", body="x", to_recipients=["bob@example.org"]).send(save_copy=False)
    Message(account=acc, subject="x", body="x", to_recipients=["bob@example.org"]).send(save_copy=False)
    assert [r["response_code"] for r in f.records()] == ["HTTP500", "NoError"]


# ------------------------------------------------------------------------------------------
# Hand-written SOAP: schema, server version, faults as Exchange shapes them
# ------------------------------------------------------------------------------------------

def test_wrong_element_order_is_schema_validation_fault(fake):
    f = fake()
    r, data = post(f, create_item(TO + "<t:Subject>late subject</t:Subject>"))
    assert r.status == 500 and r.getheader("Content-Type").startswith("text/xml")
    fl = fault_of(data)
    assert fl["faultcode"] == "a:ErrorSchemaValidation" and fl["code"] == "ErrorSchemaValidation"
    assert fl["message"] == "The request failed schema validation."
    assert "invalid child element 'Subject'" in fl["faultstring"]
    violation = fl["fault"].findtext(f"detail/{{{T_NS}}}MessageXml/{{{T_NS}}}Violation")
    assert "The element 'Message' in namespace" in violation
    assert fl["fault"].findtext(f"detail/{{{T_NS}}}MessageXml/{{{T_NS}}}LineNumber") == "5"
    # exchangelib's own fault parser turns it into ErrorSchemaValidation
    with pytest.raises(ErrorSchemaValidation):
        CreateItem._raise_soap_errors(fault=fl["fault"])
    (rec,) = f.records()
    assert rec["response_code"] == "ErrorSchemaValidation"
    assert rec["element_order"] == ["ToRecipients", "Subject"]


@pytest.mark.parametrize("children, needle", [
    ("<t:Subject>s</t:Subject><t:Foo/>" + TO, "invalid child element 'Foo'"),
    ('<t:Body BodyType="html">x</t:Body>' + TO, "The 'BodyType' attribute is invalid"),
    ("<t:Body>x</t:Body>" + TO, "The required attribute 'BodyType' is missing."),
    ("<t:Importance>Urgent</t:Importance>" + TO, "The Enumeration constraint failed."),
    ("<t:Attachments/>" + TO, "'Attachments' in namespace"),
    ("<t:Attachments><t:FileAttachment><t:Content>aGk=</t:Content><t:Name>a</t:Name></t:FileAttachment>"
     "</t:Attachments>" + TO, "The element 'FileAttachment' in namespace"),
    ("<t:Attachments><t:FileAttachment><t:Name>a</t:Name><t:IsInline>true</t:IsInline>"
     "<t:ContentId>c</t:ContentId></t:FileAttachment></t:Attachments>" + TO, "invalid child element 'ContentId'"),
    ("<t:ToRecipients><t:Mailbox><t:EmailAddress>a@b.c</t:EmailAddress><t:Name>A</t:Name></t:Mailbox>"
     "</t:ToRecipients>", "The element 'Mailbox' in namespace"),
    ("<t:From><t:Mailbox><t:EmailAddress>a@b.c</t:EmailAddress></t:Mailbox></t:From>" + TO,
     "invalid child element 'ToRecipients'"),
    ("<t:ExtendedProperty><t:Value>x</t:Value></t:ExtendedProperty>" + TO, "invalid child element 'Value'"),
])
def test_schema_violations(fake, children, needle):
    f = fake()
    r, data = post(f, create_item(children))
    assert r.status == 500
    fl = fault_of(data)
    assert fl["code"] == "ErrorSchemaValidation" and needle in fl["faultstring"], fl["faultstring"]


def test_full_schema_order_is_accepted_and_recorded(fake):
    f = fake()
    children = (
        "<t:ItemClass>IPM.Note</t:ItemClass><t:Subject>s</t:Subject><t:Sensitivity>Normal</t:Sensitivity>"
        '<t:Body BodyType="Text">b</t:Body>'
        "<t:Attachments><t:FileAttachment><t:Name>n.txt</t:Name><t:ContentType>text/plain</t:ContentType>"
        "<t:ContentId>cid1</t:ContentId><t:IsInline>false</t:IsInline><t:IsContactPhoto>false</t:IsContactPhoto>"
        "<t:Content>aGk=</t:Content></t:FileAttachment></t:Attachments>"
        "<t:Importance>Low</t:Importance><t:InReplyTo>&lt;a@b&gt;</t:InReplyTo>"
        '<t:ExtendedProperty><t:ExtendedFieldURI DistinguishedPropertySetId="InternetHeaders" PropertyName="X-Job" '
        'PropertyType="String"/><t:Value>42</t:Value></t:ExtendedProperty>'
        "<t:Sender><t:Mailbox><t:EmailAddress>alice@corp.example.com</t:EmailAddress></t:Mailbox></t:Sender>"
        + TO +
        "<t:CcRecipients/><t:IsDeliveryReceiptRequested>false</t:IsDeliveryReceiptRequested>"
        "<t:From><t:Mailbox><t:Name>Алиса</t:Name><t:EmailAddress>alice@corp.example.com</t:EmailAddress>"
        "<t:RoutingType>SMTP</t:RoutingType></t:Mailbox></t:From>"
        "<t:InternetMessageId>&lt;1@x&gt;</t:InternetMessageId><t:References>&lt;a@b&gt;</t:References>"
        "<t:ReplyTo><t:Mailbox><t:EmailAddress>r@example.org</t:EmailAddress></t:Mailbox></t:ReplyTo>"
    )
    r, data = post(f, create_item(children))
    assert r.status == 200, data
    root = etree.fromstring(data)
    rm = root.find(f"{{{SOAP_NS}}}Body/{{{M_NS}}}CreateItemResponse/{{{M_NS}}}ResponseMessages/"
                   f"{{{M_NS}}}CreateItemResponseMessage")
    assert rm.get("ResponseClass") == "Success" and rm.findtext(f"{{{M_NS}}}ResponseCode") == "NoError"
    assert len(rm.find(f"{{{M_NS}}}Items")) == 0
    info = root.find(f"{{{SOAP_NS}}}Header/{{{T_NS}}}ServerVersionInfo")
    assert info.get("MajorVersion") == "15" and info.get("Version") == "V2017_07_11"
    (rec,) = f.records()
    assert rec["headers"] == {"X-Job": "42"}
    assert rec["in_reply_to"] == "<a@b>" and rec["references"] == "<a@b>"
    assert rec["from"]["name"] == "Алиса"
    assert rec["attachments"][0]["is_inline"] is False and rec["attachments"][0]["content_id"] == "cid1"


def test_item_level_errors(fake):
    f = fake("--account-address", ACCOUNT)
    cases = [
        (create_item("<t:Subject>no recipients</t:Subject>"), "ErrorInvalidRecipients"),
        (create_item(TO.replace("bob@example.org", "not-an-address")), "ErrorInvalidRecipients"),
        (create_item("<t:DateTimeSent>2024-01-01T00:00:00Z</t:DateTimeSent>" + TO), "ErrorInvalidPropertySet"),
        (soap("<m:CreateItem><m:Items><t:Message>" + TO + "</t:Message></m:Items></m:CreateItem>"),
         "ErrorMessageDispositionRequired"),
    ]
    for body, code in cases:
        r, data = post(f, body)
        assert r.status == 200
        rm = etree.fromstring(data).find(f".//{{{M_NS}}}CreateItemResponseMessage")
        assert rm.get("ResponseClass") == "Error" and rm.findtext(f"{{{M_NS}}}ResponseCode") == code, data
        assert [c.tag.split("}")[1] for c in rm] == ["MessageText", "ResponseCode", "DescriptiveLinkKey"] + \
            (["MessageXml"] if code == "ErrorInvalidPropertySet" else []) + ["Items"]
    r, data = post(f, create_item("<t:Subject>draft</t:Subject>", disposition="SaveOnly"))
    item_id = etree.fromstring(data).find(f".//{{{T_NS}}}Message/{{{T_NS}}}ItemId")
    assert item_id.get("Id").startswith("AAMkA") and item_id.get("ChangeKey").startswith("CQAAAB")


@pytest.mark.parametrize("version", ["Exchange2019", "Exchange2007", None])
def test_invalid_server_version(fake, version):
    f = fake()
    r, data = post(f, soap(f'<m:CreateItem MessageDisposition="SendOnly"><m:Items><t:Message>{TO}'
                           f"</t:Message></m:Items></m:CreateItem>", version=version))
    assert r.status == 500
    fl = fault_of(data)
    assert fl["faultcode"] == "a:ErrorInvalidServerVersion" and fl["code"] == "ErrorInvalidServerVersion"


def test_busy_fault_shape(fake):
    f = fake("--busy-first", "2", "--backoff-ms", "777")
    for _ in range(2):
        r, data = post(f, soap('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                               '<m:FolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder>'))
        assert r.status == 500
        fl = fault_of(data)
        assert fl["faultcode"] == "a:ErrorServerBusy"
        value = fl["fault"].find(f"detail/{{{T_NS}}}MessageXml/{{{T_NS}}}Value")
        assert value.get("Name") == "BackOffMilliseconds" and value.text == "777"
    r, data = post(f, soap('<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
                           '<m:FolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder>'))
    assert r.status == 200
    folder = etree.fromstring(data).find(f".//{{{T_NS}}}Folder")
    assert folder.findtext(f"{{{T_NS}}}DisplayName") == "Top of Information Store"
    fid = folder.find(f"{{{T_NS}}}FolderId")
    assert fid.get("Id") and fid.get("ChangeKey")


def test_http_details(fake):
    f = fake("--delay-ms", "300")
    r, data = post(f, create_item(TO), path="/ews/exchange.asmx")  # IIS paths are case-insensitive
    assert r.status == 200 and r.getheader("Server") == "Microsoft-IIS/10.0"
    r, data = post(f, create_item(TO), path="/EWS/Other.asmx")
    assert r.status == 404
    r, data = post(f, b"{}", headers={"Content-Type": "application/json"})
    assert r.status == 415
    r, data = post(f, b"<not-xml")
    assert r.status == 500 and fault_of(data)["code"] == "ErrorSchemaValidation"
    # chunked request body, several requests on one kept-alive connection
    c = f.conn()
    t0 = time.monotonic()
    for _ in range(2):
        c.request("POST", "/EWS/Exchange.asmx", body=iter([create_item(TO)]), encode_chunked=True,
                  headers={"Content-Type": "text/xml; charset=utf-8", "Transfer-Encoding": "chunked"})
        resp = c.getresponse()
        resp.read()
        assert resp.status == 200
    assert time.monotonic() - t0 >= 0.6


# ------------------------------------------------------------------------------------------
# NTLM on the wire: connection-bound handshake like IIS
# ------------------------------------------------------------------------------------------

def ntlm_client(user="CORP\\alice", password="Secret123", proto="ntlm"):
    opts = NegotiateOptions.use_ntlm if proto == "ntlm" else NegotiateOptions.use_negotiate
    return spnego.client(user, password, hostname="localhost", service="HTTP", protocol=proto, options=opts)


def www_auth(r) -> List[str]:
    return r.headers.get_all("WWW-Authenticate") or []


def test_ntlm_handshake_is_bound_to_the_connection(fake):
    from spnego._ntlm_raw.messages import AvId, Challenge

    f = fake("--auth", "ntlm")
    body = create_item(TO)

    # no credentials: both Windows schemes offered
    r, _ = post(f, body)
    assert r.status == 401 and www_auth(r) == ["Negotiate", "NTLM"]

    # NEGOTIATE on connection A, AUTHENTICATE on connection B -> refused
    cli = ntlm_client()
    a = f.conn()
    r, _ = post(f, body, {"Authorization": "NTLM " + base64.b64encode(cli.step()).decode()}, conn=a)
    assert r.status == 401
    (hdr,) = www_auth(r)
    assert hdr.startswith("NTLM ")
    challenge = base64.b64decode(hdr.split()[1])
    chal = Challenge.unpack(challenge)
    assert chal.target_name == "CORP" and chal.target_info[AvId.nb_domain_name] == "CORP"
    auth = cli.step(challenge)
    r, _ = post(f, body, {"Authorization": "NTLM " + base64.b64encode(auth).decode()})  # new connection
    assert r.status == 401

    # the whole handshake on one connection works; the connection then stays authenticated
    cli = ntlm_client()
    c = f.conn()
    r, _ = post(f, body, {"Authorization": "NTLM " + base64.b64encode(cli.step()).decode()}, conn=c)
    assert r.status == 401
    auth = cli.step(base64.b64decode(www_auth(r)[0].split()[1]))
    r, data = post(f, body, {"Authorization": "NTLM " + base64.b64encode(auth).decode()}, conn=c)
    assert r.status == 200, data
    r, _ = post(f, body, conn=c)
    assert r.status == 200
    r, _ = post(f, body)  # but another connection is not
    assert r.status == 401

    recs = f.records()
    assert len(recs) == 2 and all(x["auth_user"] == "CORP\\alice" and x["auth_scheme"] == "ntlm" for x in recs)
    assert f.stats()["auth_failures"] == 1


@pytest.mark.parametrize("proto", ["ntlm", "negotiate"])
def test_negotiate_scheme(fake, proto):
    """`Negotiate` carrying raw NTLM tokens, and SPNEGO-wrapped NTLM."""
    f = fake("--auth", "ntlm")
    body = create_item(TO)
    cli = ntlm_client(user="bob" if proto == "ntlm" else "CORP\\bob", password="Hunter2!", proto=proto)
    c = f.conn()
    r, _ = post(f, body, {"Authorization": "Negotiate " + base64.b64encode(cli.step()).decode()}, conn=c)
    assert r.status == 401 and www_auth(r)[0].startswith("Negotiate ")
    tok = cli.step(base64.b64decode(www_auth(r)[0].split()[1]))
    r, data = post(f, body, {"Authorization": "Negotiate " + base64.b64encode(tok).decode()}, conn=c)
    assert r.status == 200, data
    if proto == "negotiate":  # SPNEGO's final mechListMIC comes back like IIS sends it
        assert www_auth(r)[0].startswith("Negotiate ")
    assert f.records()[0]["auth_user"] == "CORP\\bob"


def test_ntlm_wrong_password_and_missing_channel_binding(fake):
    f = fake("--auth", "ntlm", "--extended-protection", "required", tls=True)
    body = create_item(TO)
    for cli in (ntlm_client(password="nope"), ntlm_client()):  # wrong password; right one but no CBT
        c = f.conn()
        r, _ = post(f, body, {"Authorization": "NTLM " + base64.b64encode(cli.step()).decode()}, conn=c)
        tok = cli.step(base64.b64decode(www_auth(r)[0].split()[1]))
        r, _ = post(f, body, {"Authorization": "NTLM " + base64.b64encode(tok).decode()}, conn=c)
        assert r.status == 401
    assert f.records() == [] and f.stats()["auth_failures"] == 2


def test_basic_login_forms(fake):
    f = fake("--auth", "basic", "--realm", "mail.corp.example.com")
    r, _ = post(f, create_item(TO))
    assert r.status == 401 and www_auth(r) == ['Basic realm="mail.corp.example.com"']
    for login in ("alice", "CORP\\alice", "corp\\ALICE", "alice@corp.example.com"):
        cred = base64.b64encode(f"{login}:Secret123".encode()).decode()
        r, data = post(f, create_item(TO), {"Authorization": "Basic " + cred})
        assert r.status == 200, (login, data)
    cred = base64.b64encode(b"alice:secret123").decode()
    r, _ = post(f, create_item(TO), {"Authorization": "Basic " + cred})
    assert r.status == 401
    assert {x["auth_user"] for x in f.records()} == {"CORP\\alice"}
    assert f.stats()["auth_failures"] == 1 and f.stats()["unauthenticated"] == 1
