//! The Exchange (EWS) backend against the fake EWS server
//! (tests/servers/ews_server.py: real NTLM via pyspnego, the EWS schema-order
//! check, fault injection), started as a child process per test. Each test
//! calls `ExchangeBackend::send`/`test` directly and checks what the server
//! recorded in its spool.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use notigate::backend::exchange::ExchangeBackend;
use notigate::backend::{Backend, FailureKind};
use notigate::domain::{
    Attachment, Backend as Settings, Connection, ConnectionName, EmailAddress, ExchangeAuth,
    ExchangeServer, ExchangeSettings, ExchangeVersion, LogLevel, Mailbox, OutgoingMessage,
    Priority, Secret,
};
use serde_json::Value;

const ACCOUNT: &str = "alice@corp.example.com";
const PASSWORD: &str = "Secret123";
const USERS: &str = "CORP:alice:Secret123\nCORP:bob:Hunter2!\n:alice@corp.example.com:Secret123\n";

/// A running fake; killed when dropped.
struct Fake {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Fake {
    fn start(args: &[&str]) -> Fake {
        Self::start_with(args, None)
    }

    fn start_tls(args: &[&str], pki: &Pki) -> Fake {
        Self::start_with(args, Some(pki))
    }

    fn start_with(args: &[&str], pki: Option<&Pki>) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, USERS).unwrap();
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/ews_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(server)
            .args(["--host", "127.0.0.1", "--port", "0", "--quiet"])
            .arg("--users")
            .arg(&users)
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(pki) = pki {
            let (cert, key) = pki.write(dir.path());
            cmd.arg("--tls")
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        let mut child = cmd
            .spawn()
            .expect("python3 runs tests/servers/ews_server.py");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the fake did not start: {line:?}"));
        Fake { child, port, dir }
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The recorded SOAP requests, in order.
    fn records(&self) -> Vec<Value> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.spool())
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                let n = path.file_stem()?.to_str()?.parse().ok()?;
                (path.extension()? == "json").then_some((n, path))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    fn last(&self) -> Value {
        self.records().pop().expect("a recorded request")
    }

    fn stats(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.spool().join("stats.json")).unwrap()).unwrap()
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate it issued for 127.0.0.1/localhost.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "notigate test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &*ca).unwrap();
        Pki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

fn settings(server: &str, auth: ExchangeAuth) -> ExchangeSettings {
    ExchangeSettings {
        server: ExchangeServer::parse(server).unwrap(),
        version: ExchangeVersion::Exchange2016,
        auth,
        username: if auth == ExchangeAuth::None {
            String::new()
        } else {
            "alice".into()
        },
        password: (auth != ExchangeAuth::None).then(|| Secret::new(PASSWORD)),
        domain: if auth == ExchangeAuth::None {
            String::new()
        } else {
            "CORP".into()
        },
        save_copy: false,
        allow_plain_http: true,
        trusted_ca_pem: String::new(),
        accept_invalid_certs: false,
        timeout: Some(Duration::from_secs(20)),
    }
}

fn connection(settings: ExchangeSettings) -> Connection {
    Connection {
        name: ConnectionName::parse("ews_test").unwrap(),
        disabled: false,
        description: String::new(),
        log_level: LogLevel::Full,
        sender: mailbox(ACCOUNT, "Алиса Петрова"),
        is_default: false,
        backend: Settings::Exchange(settings),
    }
}

fn mailbox(address: &str, name: &str) -> Mailbox {
    Mailbox {
        address: EmailAddress::parse(address).unwrap(),
        display_name: name.into(),
    }
}

fn message() -> OutgoingMessage {
    OutgoingMessage {
        id: "01936f7e-0000-7000-8000-000000000001".into(),
        from: mailbox(ACCOUNT, "Алиса Петрова"),
        to: vec![mailbox("bob@example.com", "Bob")],
        cc: vec![],
        bcc: vec![],
        reply_to: vec![],
        subject: "Hello".into(),
        text_body: Some("Hello, Bob.".into()),
        html_body: None,
        attachments: vec![],
        headers: vec![],
        priority: Priority::Normal,
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

#[tokio::test]
async fn basic_with_the_right_password_delivers() {
    let fake = Fake::start(&["--auth", "basic"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Basic));
    let delivery = backend.send(&conn, &message()).await.unwrap();
    assert_eq!(delivery.provider_message_id, "");
    let rec = fake.last();
    assert_eq!(str_of(&rec, "response_code"), "NoError");
    assert_eq!(str_of(&rec, "auth_scheme"), "basic");
    assert_eq!(str_of(&rec, "auth_user"), "CORP\\alice");
    assert_eq!(str_of(&rec, "operation"), "CreateItem");
    assert_eq!(str_of(&rec, "message_disposition"), "SendOnly");
    assert!(str_of(&rec, "content_type").starts_with("text/xml"));
    assert_eq!(rec["to"][0]["address"], "bob@example.com");
}

#[tokio::test]
async fn ntlm_with_the_right_password_delivers_and_keeps_the_connection() {
    let fake = Fake::start(&["--auth", "ntlm"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Ntlm));
    backend.send(&conn, &message()).await.unwrap();
    backend.send(&conn, &message()).await.unwrap();
    let records = fake.records();
    assert_eq!(records.len(), 2);
    for rec in &records {
        assert_eq!(str_of(rec, "response_code"), "NoError");
        assert_eq!(str_of(rec, "auth_scheme"), "ntlm");
        assert_eq!(str_of(rec, "auth_user"), "CORP\\alice");
    }
    // One connection, one handshake: the second message went out on the
    // connection NTLM had already authenticated.
    let stats = fake.stats();
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["auth_challenges"], 1, "{stats}");
    assert_eq!(stats["ntlm_authenticated"], 1, "{stats}");
}

#[tokio::test]
async fn ntlm_takes_domain_qualified_and_upn_user_names() {
    let fake = Fake::start(&["--auth", "ntlm"]);
    let backend = ExchangeBackend::new();
    for user in ["CORP\\alice", "alice@corp.example.com"] {
        let mut s = settings(&fake.server(), ExchangeAuth::Ntlm);
        s.username = user.into();
        s.domain.clear();
        backend.send(&connection(s), &message()).await.unwrap();
        let rec = fake.last();
        assert_eq!(str_of(&rec, "response_code"), "NoError", "{user}");
        assert_eq!(str_of(&rec, "auth_scheme"), "ntlm", "{user}");
    }
}

#[tokio::test]
async fn a_wrong_password_fails_permanently() {
    let fake = Fake::start(&["--auth", "ntlm,basic"]);
    let backend = ExchangeBackend::new();
    for auth in [ExchangeAuth::Basic, ExchangeAuth::Ntlm] {
        let mut s = settings(&fake.server(), auth);
        s.password = Some(Secret::new("wrong"));
        let err = backend.send(&connection(s), &message()).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Permanent, "{auth:?}: {err}");
        assert!(err.message.contains("authentication rejected"), "{err}");
        assert!(!err.message.contains("wrong"), "the password leaked: {err}");
    }
    assert!(fake.records().is_empty());
    assert_eq!(fake.stats()["auth_failures"], 2);
}

#[tokio::test]
async fn changed_settings_drop_the_pooled_connection() {
    let fake = Fake::start(&["--auth", "ntlm"]);
    let backend = ExchangeBackend::new();
    let mut s = settings(&fake.server(), ExchangeAuth::Ntlm);
    backend
        .send(&connection(s.clone()), &message())
        .await
        .unwrap();
    // Same connection name, new password: the authenticated connection
    // must not be reused.
    s.password = Some(Secret::new("changed"));
    let err = backend
        .send(&connection(s.clone()), &message())
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");
    s.password = Some(Secret::new(PASSWORD));
    backend.send(&connection(s), &message()).await.unwrap();
    backend.forget("ews_test").await;
    assert_eq!(fake.records().len(), 2);
    assert_eq!(fake.stats()["connections"], 3);
}

#[tokio::test]
async fn a_restarted_server_gets_a_new_connection() {
    let first = Fake::start(&["--auth", "ntlm"]);
    let port = first.port.to_string();
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&first.server(), ExchangeAuth::Ntlm));
    backend.send(&conn, &message()).await.unwrap();
    // The pooled, authenticated connection dies with the server.
    drop(first);
    let second = Fake::start(&["--auth", "ntlm", "--port", &port]);
    backend.send(&conn, &message()).await.unwrap();
    assert_eq!(str_of(&second.last(), "response_code"), "NoError");
    assert_eq!(second.stats()["ntlm_authenticated"], 1);
}

#[tokio::test]
async fn every_version_string_reaches_the_server() {
    let fake = Fake::start(&["--auth", "basic"]);
    let backend = ExchangeBackend::new();
    let versions = [
        (ExchangeVersion::Exchange2007Sp1, "Exchange2007_SP1"),
        (ExchangeVersion::Exchange2010, "Exchange2010"),
        (ExchangeVersion::Exchange2010Sp1, "Exchange2010_SP1"),
        (ExchangeVersion::Exchange2010Sp2, "Exchange2010_SP2"),
        (ExchangeVersion::Exchange2013, "Exchange2013"),
        (ExchangeVersion::Exchange2013Sp1, "Exchange2013_SP1"),
        (ExchangeVersion::Exchange2016, "Exchange2016"),
    ];
    for (version, _) in versions {
        let mut s = settings(&fake.server(), ExchangeAuth::Basic);
        s.version = version;
        backend.send(&connection(s), &message()).await.unwrap();
    }
    let seen: Vec<String> = fake
        .records()
        .iter()
        .map(|r| {
            assert_eq!(str_of(r, "response_code"), "NoError");
            str_of(r, "server_version").to_owned()
        })
        .collect();
    let expected: Vec<String> = versions.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(seen, expected);
}

fn full_message() -> OutgoingMessage {
    let mut m = message();
    m.subject = "Отчёт за квартал <Q3> & итоги".into();
    m.to = vec![
        mailbox("bob@example.com", "Боб"),
        mailbox("carol@example.com", ""),
    ];
    m.cc = vec![mailbox("dave@example.com", "Dave")];
    m.bcc = vec![mailbox("audit@example.com", "")];
    m.reply_to = vec![mailbox("support@corp.example.com", "Поддержка")];
    m.text_body = Some("Plain text".into());
    m.html_body = Some("<p>Привет, <b>Боб</b> <img src=\"cid:logo@corp\"></p>".into());
    m.attachments = vec![
        Attachment {
            filename: "отчёт.pdf".into(),
            content_type: "application/pdf".into(),
            content: b"%PDF-1.4 \x00\x01\x02\xff".to_vec(),
            content_id: None,
        },
        Attachment {
            filename: "logo.png".into(),
            content_type: "image/png".into(),
            content: vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3],
            content_id: Some("logo@corp".into()),
        },
    ];
    m.headers = vec![
        ("X-Campaign".into(), "q3 & more".into()),
        (
            "List-Unsubscribe".into(),
            "<mailto:unsubscribe@corp.example.com>".into(),
        ),
        ("In-Reply-To".into(), "<prev@corp.example.com>".into()),
        (
            "References".into(),
            "<first@corp.example.com> <prev@corp.example.com>".into(),
        ),
    ];
    m.priority = Priority::High;
    m
}

#[tokio::test]
async fn a_message_with_everything_set_passes_the_schema_check() {
    let fake = Fake::start(&["--auth", "ntlm"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Ntlm));
    let m = full_message();
    backend.send(&conn, &m).await.unwrap();
    let rec = fake.last();
    assert_eq!(str_of(&rec, "response_code"), "NoError", "{}", rec["raw"]);
    let order: Vec<&str> = rec["element_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "Subject",
            "Body",
            "Attachments",
            "Importance",
            "InReplyTo",
            "ExtendedProperty",
            "ExtendedProperty",
            "ToRecipients",
            "CcRecipients",
            "BccRecipients",
            "From",
            "InternetMessageId",
            "References",
            "ReplyTo",
        ]
    );
    // Both bodies given: the HTML one is sent.
    assert_eq!(str_of(&rec, "body_type"), "HTML");
    assert_eq!(str_of(&rec, "body"), m.html_body.as_deref().unwrap());
    assert_eq!(str_of(&rec, "importance"), "High");
    assert_eq!(rec["headers"]["X-Campaign"], "q3 & more");
    assert_eq!(
        rec["headers"]["List-Unsubscribe"],
        "<mailto:unsubscribe@corp.example.com>"
    );
    assert_eq!(str_of(&rec, "in_reply_to"), "<prev@corp.example.com>");
    assert_eq!(
        str_of(&rec, "references"),
        "<first@corp.example.com> <prev@corp.example.com>"
    );
    assert_eq!(str_of(&rec, "internet_message_id"), m.message_id());
    let addresses = |key: &str| -> Vec<String> {
        rec[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| str_of(r, "address").to_owned())
            .collect()
    };
    assert_eq!(addresses("to"), ["bob@example.com", "carol@example.com"]);
    assert_eq!(addresses("cc"), ["dave@example.com"]);
    assert_eq!(addresses("bcc"), ["audit@example.com"]);
    assert_eq!(addresses("reply_to"), ["support@corp.example.com"]);
    assert_eq!(rec["reply_to"][0]["name"], "Поддержка");
    assert_eq!(rec["to"][0]["name"], "Боб");
}

#[tokio::test]
async fn cyrillic_subject_and_sender_name_round_trip() {
    let fake = Fake::start(&["--auth", "basic"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Basic));
    let mut m = message();
    m.subject = "Счёт № 42 — оплата до пятницы".into();
    m.text_body = Some("Здравствуйте!\nСчёт во вложении.".into());
    backend.send(&conn, &m).await.unwrap();
    let rec = fake.last();
    assert_eq!(str_of(&rec, "subject"), m.subject);
    assert_eq!(str_of(&rec, "body_type"), "Text");
    assert_eq!(str_of(&rec, "body"), "Здравствуйте!\nСчёт во вложении.");
    assert_eq!(rec["from"]["name"], "Алиса Петрова");
    assert_eq!(rec["from"]["address"], ACCOUNT);
}

#[tokio::test]
async fn attachments_arrive_with_their_bytes_and_inline_marks() {
    let fake = Fake::start(&["--auth", "basic"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Basic));
    let m = full_message();
    backend.send(&conn, &m).await.unwrap();
    let rec = fake.last();
    let atts = rec["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2);
    use base64::Engine as _;
    for (got, want) in atts.iter().zip(&m.attachments) {
        assert_eq!(str_of(got, "kind"), "file");
        assert_eq!(str_of(got, "name"), want.filename);
        assert_eq!(str_of(got, "content_type"), want.content_type);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(str_of(got, "content_b64"))
            .unwrap();
        assert_eq!(bytes, want.content);
        assert_eq!(got["is_inline"], want.content_id.is_some());
        assert_eq!(got["content_id"].as_str(), want.content_id.as_deref());
    }
}

#[tokio::test]
async fn server_busy_is_transient_with_its_back_off_then_succeeds() {
    let fake = Fake::start(&[
        "--auth",
        "basic",
        "--busy-first",
        "1",
        "--backoff-ms",
        "1500",
    ]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Basic));
    let err = backend.send(&conn, &message()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient, "{err}");
    assert!(
        err.retry_after >= Some(Duration::from_millis(1500)),
        "{err:?}"
    );
    assert!(err.message.contains("ErrorServerBusy"), "{err}");
    backend.send(&conn, &message()).await.unwrap();
    let codes: Vec<String> = fake
        .records()
        .iter()
        .map(|r| str_of(r, "response_code").to_owned())
        .collect();
    assert_eq!(codes, ["ErrorServerBusy", "NoError"]);
}

#[tokio::test]
async fn send_as_denied_explains_the_sender_rule() {
    let fake = Fake::start(&["--auth", "ntlm", "--account-address", ACCOUNT]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Ntlm));
    let mut m = message();
    m.from = mailbox("ceo@corp.example.com", "CEO");
    let err = backend.send(&conn, &m).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");
    assert!(
        err.message.contains(
            "the sender address ceo@corp.example.com differs from the account CORP\\alice \
             and the Exchange server does not allow sending as it"
        ),
        "{err}"
    );
    assert!(err.message.contains("ErrorSendAsDenied"), "{err}");
    assert!(
        err.message.contains("does not have the right to send mail"),
        "the server's words are missing: {err}"
    );
    // The account's own address goes through.
    backend.send(&conn, &message()).await.unwrap();
}

#[tokio::test]
async fn an_invalid_recipient_fails_permanently() {
    let fake = Fake::start(&["--auth", "basic", "--invalid-recipient", "bob@example.com"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Basic));
    let err = backend.send(&conn, &message()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");
    assert!(err.message.contains("ErrorInvalidRecipients"), "{err}");
    assert!(err.message.contains("bob@example.com"), "{err}");
}

#[tokio::test]
async fn http_500_without_soap_is_transient() {
    let fake = Fake::start(&["--auth", "ntlm", "--http500-first", "1"]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::Ntlm));
    let err = backend.send(&conn, &message()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient, "{err}");
    assert!(err.message.contains("500"), "{err}");
    backend.send(&conn, &message()).await.unwrap();
    assert_eq!(str_of(&fake.last(), "response_code"), "NoError");
}

#[tokio::test]
async fn save_copy_sends_and_saves_into_sent_items() {
    let fake = Fake::start(&["--auth", "basic"]);
    let backend = ExchangeBackend::new();
    let mut s = settings(&fake.server(), ExchangeAuth::Basic);
    s.save_copy = true;
    backend.send(&connection(s), &message()).await.unwrap();
    let rec = fake.last();
    assert_eq!(str_of(&rec, "response_code"), "NoError");
    assert_eq!(str_of(&rec, "message_disposition"), "SendAndSaveCopy");
    assert_eq!(str_of(&rec, "saved_item_folder"), "sentitems");
}

#[tokio::test]
async fn without_authentication_against_an_open_server() {
    let fake = Fake::start(&[]);
    let backend = ExchangeBackend::new();
    let conn = connection(settings(&fake.server(), ExchangeAuth::None));
    backend.send(&conn, &message()).await.unwrap();
    assert_eq!(str_of(&fake.last(), "auth_scheme"), "none");
}

#[tokio::test]
async fn a_wrong_path_and_a_slow_server_are_told_apart() {
    let fake = Fake::start(&["--auth", "basic", "--delay-ms", "3000"]);
    let backend = ExchangeBackend::new();
    let mut s = settings(&format!("{}/owa/", fake.server()), ExchangeAuth::Basic);
    let err = backend
        .send(&connection(s.clone()), &message())
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");
    assert!(err.message.contains("404"), "{err}");

    s.server = ExchangeServer::parse(&fake.server()).unwrap();
    s.timeout = Some(Duration::from_millis(800));
    let err = backend.send(&connection(s), &message()).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient, "{err}");
    assert!(err.message.contains("timed out"), "{err}");
}

fn https(fake: &Fake, auth: ExchangeAuth, pki: &Pki) -> ExchangeSettings {
    let mut s = settings(&fake.server(), auth);
    s.allow_plain_http = false;
    s.trusted_ca_pem = pki.ca_pem.clone();
    s
}

#[tokio::test]
async fn https_trusts_the_configured_ca_and_refuses_other_certificates() {
    let pki = Pki::new();
    let fake = Fake::start_tls(&["--auth", "basic"], &pki);
    let backend = ExchangeBackend::new();

    let s = https(&fake, ExchangeAuth::Basic, &pki);
    backend
        .send(&connection(s.clone()), &message())
        .await
        .unwrap();
    let rec = fake.last();
    assert_eq!(rec["tls"], true);
    assert_eq!(str_of(&rec, "response_code"), "NoError");

    let mut untrusted = s.clone();
    untrusted.trusted_ca_pem = Pki::new().ca_pem;
    let err = backend
        .send(&connection(untrusted.clone()), &message())
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");
    assert!(err.message.contains("trusted_ca_pem"), "{err}");
    assert!(err.message.contains("accept_invalid_certs"), "{err}");

    untrusted.accept_invalid_certs = true;
    backend
        .send(&connection(untrusted), &message())
        .await
        .unwrap();
    assert_eq!(fake.records().len(), 2);
}

#[tokio::test]
async fn ntlm_over_https_carries_the_channel_binding_extended_protection_wants() {
    let pki = Pki::new();
    let fake = Fake::start_tls(
        &["--auth", "ntlm", "--extended-protection", "required"],
        &pki,
    );
    let backend = ExchangeBackend::new();
    let conn = connection(https(&fake, ExchangeAuth::Ntlm, &pki));
    backend.send(&conn, &full_message()).await.unwrap();
    let rec = fake.last();
    assert_eq!(str_of(&rec, "auth_scheme"), "ntlm");
    assert_eq!(str_of(&rec, "response_code"), "NoError");
    assert_eq!(fake.stats()["auth_failures"], 0);
    let report = backend.test(&conn).await;
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn connection_test_reports_its_stages() {
    let pki = Pki::new();
    let fake = Fake::start(&["--auth", "ntlm", "--account-address", ACCOUNT]);
    let backend = ExchangeBackend::new();

    let good = settings(&fake.server(), ExchangeAuth::Ntlm);
    let report = backend.test(&connection(good.clone())).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.stage, "ews");
    assert!(report.detail.contains("NoError"), "{report:?}");
    let rec = fake.last();
    assert_eq!(str_of(&rec, "operation"), "GetFolder");
    assert_eq!(rec["folders"][0], "msgfolderroot");
    assert_eq!(str_of(&rec, "folder_shape"), "IdOnly");

    let mut wrong = good.clone();
    wrong.password = Some(Secret::new("wrong"));
    let report = backend.test(&connection(wrong)).await;
    assert!(!report.ok);
    assert_eq!(report.stage, "auth", "{report:?}");
    assert!(
        report.detail.contains("authentication rejected"),
        "{report:?}"
    );

    let mut none = good.clone();
    none.auth = ExchangeAuth::None;
    let report = backend.test(&connection(none)).await;
    assert_eq!((report.ok, report.stage), (false, "auth"), "{report:?}");
    assert!(report.detail.contains("NTLM"), "{report:?}");

    // A port nobody listens on: bind one, then free it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = settings(&format!("127.0.0.1:{port}"), ExchangeAuth::Ntlm);
    let report = backend.test(&connection(refused)).await;
    assert_eq!((report.ok, report.stage), (false, "connect"), "{report:?}");

    // The plain-HTTP fake contacted with HTTPS.
    let mut tls_to_plain = good.clone();
    tls_to_plain.allow_plain_http = false;
    tls_to_plain.trusted_ca_pem = pki.ca_pem.clone();
    // The fake may wait for the rest of a "request line" that never comes.
    tls_to_plain.timeout = Some(Duration::from_secs(3));
    let report = backend.test(&connection(tls_to_plain)).await;
    assert_eq!((report.ok, report.stage), (false, "tls"), "{report:?}");
    assert!(report.detail.contains("allow_plain_http"), "{report:?}");
}

#[tokio::test]
async fn connection_test_over_https_names_certificate_problems() {
    let pki = Pki::new();
    let fake = Fake::start_tls(&["--auth", "basic"], &pki);
    let backend = ExchangeBackend::new();
    let mut s = https(&fake, ExchangeAuth::Basic, &pki);
    let report = backend.test(&connection(s.clone())).await;
    assert!(report.ok, "{report:?}");

    s.trusted_ca_pem.clear();
    let report = backend.test(&connection(s)).await;
    assert_eq!((report.ok, report.stage), (false, "tls"), "{report:?}");
    assert!(report.detail.contains("trusted_ca_pem"), "{report:?}");
}
