//! Test harness for the SMTP backend: starts the real Python SMTP server
//! (tests/servers/smtp_server.py) as a child process on a free port, makes
//! test certificates, builds connections and messages, reads the spool and
//! decodes received MIME with Python's `email` package.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use notigate::domain::{
    Attachment, Backend, Connection, ConnectionName, EmailAddress, HostName, LogLevel, Mailbox,
    OutgoingMessage, Priority, Secret, SmtpAuth, SmtpSettings, SmtpTls,
};
use serde_json::Value;
use tempfile::TempDir;

/// The account every test server knows (pyspnego's `DOMAIN:user:password`).
pub const DOMAIN: &str = "CORP";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "s3cret-Pa55";

/// A running `smtp_server.py`; killed when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl SmtpServer {
    /// Starts the server with `args` (plus `--port 0`, a spool and the
    /// accounts file) and waits for its `READY <port>` line.
    pub fn start(args: &[&str]) -> SmtpServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = dir.path().join("users.txt");
        fs::write(&users, format!("{DOMAIN}:{USER}:{PASSWORD}\n")).expect("users file");
        let stderr = fs::File::create(dir.path().join("server.log")).expect("log file");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0", "-v"])
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .arg("--users")
            .arg(&users)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("python3 starts (pip install -r tests/servers/requirements.txt)");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let port = match line.trim().strip_prefix("READY ") {
            Some(port) => port.parse().expect("READY <port>"),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("smtp_server.py did not start ({line:?}):\n{log}");
            }
        };
        SmtpServer { child, port, dir }
    }

    /// Every spooled message, oldest first.
    pub fn spool(&self) -> Vec<Value> {
        let spool = self.dir.path().join("spool");
        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(&spool)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter_map(|p| {
                        let n = p.file_stem()?.to_str()?.parse().ok()?;
                        (p.extension()? == "json").then_some((n, p))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| serde_json::from_slice(&fs::read(p).expect("spool file")).expect("json"))
            .collect()
    }

    /// The only spooled message.
    pub fn single(&self) -> Value {
        let mut spool = self.spool();
        assert_eq!(spool.len(), 1, "spool: {spool:#?}");
        spool.remove(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate it signed for `localhost` and
/// `127.0.0.1`, written as PEM files for the server.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    _dir: TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "notigate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let dir = tempfile::tempdir().expect("temp dir");
        let cert_path = dir.path().join("server.pem");
        let key_path = dir.path().join("server.key");
        fs::write(&cert_path, cert.pem()).expect("cert file");
        fs::write(&key_path, key.serialize_pem()).expect("key file");
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_path,
            key_path,
            _dir: dir,
        }
    }

    /// Server flags for `--tls MODE` with this certificate.
    pub fn server_args(&self, mode: &str) -> Vec<String> {
        vec![
            "--tls".into(),
            mode.into(),
            "--cert".into(),
            self.cert_path.display().to_string(),
            "--key".into(),
            self.key_path.display().to_string(),
        ]
    }
}

pub fn settings(port: u16, tls: SmtpTls, auth: SmtpAuth) -> SmtpSettings {
    SmtpSettings {
        host: HostName::parse("127.0.0.1").expect("host"),
        port,
        tls,
        trusted_ca_pem: String::new(),
        accept_invalid_certs: false,
        auth,
        username: if matches!(auth, SmtpAuth::None) {
            String::new()
        } else {
            USER.to_owned()
        },
        password: (!matches!(auth, SmtpAuth::None)).then(|| Secret::new(PASSWORD)),
        domain: String::new(),
        hello_name: "client.test".to_owned(),
        timeout: Some(Duration::from_secs(10)),
    }
}

pub fn connection(settings: SmtpSettings) -> Connection {
    Connection {
        name: ConnectionName::parse("test_smtp").expect("name"),
        disabled: false,
        description: String::new(),
        log_level: LogLevel::Off,
        sender: mailbox("noreply@example.com", "Notigate"),
        is_default: false,
        backend: Backend::Smtp(settings),
    }
}

pub fn mailbox(address: &str, display_name: &str) -> Mailbox {
    Mailbox {
        address: EmailAddress::parse(address).expect("address"),
        display_name: display_name.to_owned(),
    }
}

pub fn message(connection: &Connection, to: &[&str]) -> OutgoingMessage {
    OutgoingMessage {
        id: format!("test-{}", std::process::id()),
        from: connection.sender.clone(),
        to: to.iter().map(|a| mailbox(a, "")).collect(),
        cc: vec![],
        bcc: vec![],
        reply_to: vec![],
        subject: "Hello".into(),
        text_body: Some("Hello from notigate.".into()),
        html_body: None,
        attachments: vec![],
        headers: vec![],
        priority: Priority::Normal,
    }
}

pub fn attachment(
    filename: &str,
    content_type: &str,
    content: &[u8],
    cid: Option<&str>,
) -> Attachment {
    Attachment {
        filename: filename.into(),
        content_type: content_type.into(),
        content: content.to_vec(),
        content_id: cid.map(Into::into),
    }
}

/// Decodes a received message with Python's `email` package (the
/// receiving side's view): subject, addresses, headers and the MIME tree.
pub fn parse_with_python(spooled: &Value) -> Value {
    const SCRIPT: &str = r#"
import base64, json, sys
from email import message_from_bytes, policy

msg = message_from_bytes(base64.b64decode(sys.stdin.read()), policy=policy.default)

def addresses(name):
    header = msg[name]
    if header is None:
        return None
    return [[a.display_name, a.addr_spec] for a in header.addresses]

def walk(part):
    node = {
        "type": part.get_content_type(),
        "disposition": part.get_content_disposition(),
        "filename": part.get_filename(),
        "content_id": part.get("Content-ID"),
    }
    if part.is_multipart():
        node["parts"] = [walk(p) for p in part.iter_parts()]
    elif part.get_content_maintype() == "text":
        # The wire form has CRLF line ends; compare text as written.
        node["text"] = part.get_content().replace("\r\n", "\n")
    else:
        node["bytes_b64"] = base64.b64encode(part.get_payload(decode=True)).decode()
    return node

print(json.dumps({
    "subject": msg["Subject"],
    "from": addresses("From"),
    "to": addresses("To"),
    "cc": addresses("Cc"),
    "reply_to": addresses("Reply-To"),
    "header_names": [k for k in msg.keys()],
    "headers": {k: str(v) for k, v in msg.items()},
    "defects": [type(d).__name__ for d in msg.defects],
    "tree": walk(msg),
}))
"#;
    use std::io::Write;
    let raw = spooled["data_b64"].as_str().expect("data_b64");
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python json")
}
