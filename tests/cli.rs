//! The command-line client, black-box: the real `notigate` binary run as a
//! user would run it, against a real gateway (and the Python SMTP test
//! server behind it), checking what it prints and its exit code.

mod common;

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use common::{BIN, TestApp, servers::PyServer};
use serde_json::Value;

/// Runs the client against one gateway.
struct Cli {
    server: String,
}

impl Cli {
    fn new(app: &TestApp) -> Cli {
        Cli {
            server: format!("http://{}", app.addr),
        }
    }

    /// `notigate ARGS --server URL` with no NOTIGATE_* from the test's
    /// environment, and `stdin` on standard input.
    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .args(["--server", &self.server])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NOTIGATE_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("spawning notigate");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())
            .expect("writing stdin");
        child.wait_with_output().expect("notigate output")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    /// Runs, asserts exit code 0, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "notigate {args:?}: {}",
            describe(&out)
        );
        String::from_utf8(out.stdout).expect("UTF-8 stdout")
    }

    /// Runs with `--json`, asserts exit code 0, parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of a `key: value` line of human output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test file");
    path.to_str().expect("UTF-8 path").to_owned()
}

const PASSWORD: &str = "cli-Passw0rd with spaces";

#[tokio::test]
async fn an_smtp_connection_lives_its_whole_life_through_the_command_line() {
    let files = tempfile::tempdir().unwrap();
    // The SMTP server requires AUTH PLAIN as mailer with PASSWORD, so a
    // delivered message proves the password from --password-file arrived.
    let users = write(files.path(), "users", &format!("CORP:mailer:{PASSWORD}\n"));
    let smtp = PyServer::smtp(&["--auth", "PLAIN", "--require-auth", "--users", &users]);
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let password_file = write(files.path(), "password", &format!("{PASSWORD}\n"));
    let port = smtp.port.to_string();

    let created = cli.ok(&[
        "connection",
        "create",
        "alerts_smtp",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--smtp-auth",
        "plain",
        "--username",
        "mailer",
        "--password-file",
        &password_file,
        "--domain",
        "CORP",
        "--hello-name",
        "gateway.example.com",
        "--timeout",
        "30s",
        "--sender-address",
        "alerts@example.com",
        "--sender-name",
        "Оповещения",
        "--description",
        "Alerts through the local relay",
        "--log-level",
        "full",
        "--default",
        // A server without a tokens file ignores the token.
        "--token",
        "ngt_ignored",
    ]);
    assert_eq!(field(&created, "name"), Some("alerts_smtp"), "{created}");
    assert!(!created.contains(PASSWORD), "{created}");

    let shown = cli.ok(&["connection", "get", "alerts_smtp"]);
    assert_eq!(field(&shown, "smtp.password"), Some("(set)"), "{shown}");
    assert_eq!(field(&shown, "smtp.port"), Some(port.as_str()), "{shown}");
    assert_eq!(field(&shown, "smtp.auth"), Some("plain"), "{shown}");
    assert_eq!(field(&shown, "sender.display_name"), Some("Оповещения"));
    assert_eq!(field(&shown, "is_default"), Some("yes"));
    assert!(!shown.contains(PASSWORD), "{shown}");

    let json = cli.json(&["connection", "get", "alerts_smtp"]);
    assert_eq!(json["name"], "alerts_smtp");
    assert_eq!(json["logLevel"], "LOG_LEVEL_FULL");
    assert_eq!(json["isDefault"], true);
    assert_eq!(json["sender"]["displayName"], "Оповещения");
    assert_eq!(json["smtp"]["port"], smtp.port);
    assert_eq!(json["smtp"]["tls"], "SMTP_TLS_NONE");
    assert_eq!(json["smtp"]["auth"], "SMTP_AUTH_PLAIN");
    assert_eq!(json["smtp"]["passwordSet"], true);
    assert_eq!(json["smtp"]["timeout"], "30s");
    assert!(json["smtp"].get("password").is_none(), "{json}");
    let etag = json["etag"].as_str().expect("an etag").to_owned();

    let list = cli.ok(&["connection", "list"]);
    let header = list.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("alerts_smtp") && l.contains(&format!("127.0.0.1:{port}"))),
        "{list}"
    );
    let listed = cli.json(&["connection", "list", "--all"]);
    assert_eq!(listed["connections"][0]["name"], "alerts_smtp", "{listed}");

    let updated = cli.json(&[
        "connection",
        "update",
        "alerts_smtp",
        "--description",
        "Alerts (night shift)",
        "--etag",
        &etag,
    ]);
    assert_eq!(updated["description"], "Alerts (night shift)");
    assert_ne!(updated["etag"], etag.as_str());
    let mut before = json.clone();
    let mut after = updated.clone();
    for c in [&mut before, &mut after] {
        let o = c.as_object_mut().unwrap();
        for k in ["description", "etag", "updateTime"] {
            o.remove(k);
        }
    }
    assert_eq!(after, before, "an update changes only the fields given");

    // A stale etag is refused, and says so.
    let stale = cli.run(&[
        "connection",
        "update",
        "alerts_smtp",
        "--description",
        "x",
        "--etag",
        &etag,
    ]);
    assert_eq!(stale.status.code(), Some(1), "{}", describe(&stale));
    assert!(
        stderr(&stale).starts_with("notigate: error: ABORTED: "),
        "{}",
        describe(&stale)
    );

    let tested = cli.ok(&["connection", "test", "alerts_smtp"]);
    assert_eq!(field(&tested, "ok"), Some("yes"), "{tested}");
    assert_eq!(field(&tested, "stage"), Some("sender"), "{tested}");
    assert!(field(&tested, "latency").is_some(), "{tested}");

    let sent = cli.ok(&[
        "send",
        "--to",
        "Дежурный <oncall@example.com>, second@example.com",
        "--subject",
        "Диск заполнен на host42",
        "--text",
        "/var is 97% full.",
        "--header",
        "X-Ticket: 42",
        "--priority",
        "high",
        "--wait",
    ]);
    assert_eq!(field(&sent, "state"), Some("DELIVERED"), "{sent}");
    let id = field(&sent, "id").expect("an id").to_owned();
    let received = smtp.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["auth_user"], "mailer");
    assert_eq!(received[0]["mail_from"], "alerts@example.com");
    let mut rcpts: Vec<&str> = received[0]["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["oncall@example.com", "second@example.com"]);
    let data = received[0]["data"].as_str().unwrap_or_default();
    assert!(data.contains("X-Ticket: 42"), "{data}");

    let status = cli.ok(&["status", &id]);
    assert_eq!(field(&status, "state"), Some("DELIVERED"), "{status}");
    assert_eq!(field(&status, "connection"), Some("alerts_smtp"));
    assert_eq!(field(&status, "attempts"), Some("1"));
    let status = cli.json(&["status", &id]);
    assert_eq!(status["state"], "NOTIFICATION_STATE_DELIVERED");
    assert_eq!(status["id"], id.as_str());

    // Watching a delivered notification prints its state and exits 0.
    let watched = cli.ok(&["status", &id, "--watch"]);
    let last = watched.lines().last().unwrap_or_default();
    assert!(last.contains("DELIVERED"), "{watched}");

    let deleted = cli.ok(&["connection", "delete", "alerts_smtp"]);
    assert_eq!(deleted.trim(), "deleted alerts_smtp");
    let gone = cli.run(&["connection", "get", "alerts_smtp"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).starts_with("notigate: error: NOT_FOUND: "),
        "{}",
        describe(&gone)
    );
}

#[tokio::test]
async fn an_exchange_connection_takes_every_field_from_flags() {
    let files = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.corp.example.com".into()])
        .expect("a test certificate")
        .cert
        .pem();
    let ca_file = write(files.path(), "ca.pem", &ca);
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let out = cli.run_with_stdin(
        &[
            "connection",
            "create",
            "robot_ews",
            "--exchange-server",
            "mail.corp.example.com:8443/EWS/Exchange.asmx",
            "--exchange-version",
            "2013-sp1",
            "--exchange-auth",
            "ntlm",
            "--username",
            "robot",
            "--password-stdin",
            "--domain",
            "CORP",
            "--save-copy",
            "--allow-plain-http",
            "--trusted-ca-file",
            &ca_file,
            "--accept-invalid-certs",
            "--timeout",
            "45s",
            "--sender-address",
            "robot@corp.example.com",
            "--sender-name",
            "Робот",
            "--description",
            "Exchange relay",
            "--log-level",
            "errors",
            "--disabled",
            "--json",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let created: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let got = cli.json(&["connection", "get", "robot_ews"]);
    assert_eq!(got, created);
    assert_eq!(got["disabled"], true);
    assert_eq!(got["logLevel"], "LOG_LEVEL_ERRORS");
    assert_eq!(got["sender"]["address"], "robot@corp.example.com");
    assert_eq!(got["sender"]["displayName"], "Робот");
    let e = &got["exchange"];
    assert_eq!(e["server"], "mail.corp.example.com:8443/EWS/Exchange.asmx");
    assert_eq!(e["version"], "EXCHANGE_VERSION_2013_SP1");
    assert_eq!(e["auth"], "EXCHANGE_AUTH_NTLM");
    assert_eq!(e["username"], "robot");
    assert_eq!(e["passwordSet"], true);
    assert_eq!(e["domain"], "CORP");
    assert_eq!(e["saveCopy"], true);
    assert_eq!(e["allowPlainHttp"], true);
    assert_eq!(e["trustedCaPem"].as_str().map(str::trim), Some(ca.trim()));
    assert_eq!(e["acceptInvalidCerts"], true);
    assert_eq!(e["timeout"], "45s");
    assert!(got.get("smtp").is_none());

    // A flag both backends have goes to the backend the connection uses.
    let updated = cli.json(&["connection", "update", "robot_ews", "--username", "robot2"]);
    assert_eq!(updated["exchange"]["username"], "robot2");
    assert_eq!(updated["exchange"]["passwordSet"], true);

    let shown = cli.ok(&["connection", "get", "robot_ews"]);
    assert_eq!(
        field(&shown, "exchange.version"),
        Some("2013-sp1"),
        "{shown}"
    );
    assert_eq!(field(&shown, "exchange.password"), Some("(set)"), "{shown}");
    assert_eq!(
        field(&shown, "exchange.trusted_ca_pem"),
        Some("1 certificate")
    );
    assert!(!shown.contains(PASSWORD));
}

#[tokio::test]
async fn a_bad_port_is_reported_with_its_field_and_exit_code_1() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let out = cli.run(&[
        "connection",
        "create",
        "bad_port",
        "--smtp-host",
        "smtp.example.com",
        "--smtp-port",
        "70000",
        "--smtp-auth",
        "none",
        "--sender-address",
        "a@example.com",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("notigate: error: INVALID_ARGUMENT: "),
        "{err}"
    );
    assert!(
        lines[1..]
            .iter()
            .any(|l| l.trim_start().starts_with("connection.smtp.port: ")),
        "each violation on its own line: {err}"
    );
    assert!(app.list_all().await.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn a_failed_delivery_makes_send_wait_and_status_watch_exit_1() {
    let smtp = PyServer::smtp(&["--fail-rcpt", "nobody@example.com"]);
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let port = smtp.port.to_string();
    cli.ok(&[
        "connection",
        "create",
        "relay",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--smtp-auth",
        "none",
        "--sender-address",
        "alerts@example.com",
    ]);
    let out = cli.run(&[
        "send",
        "--connection",
        "relay",
        "--to",
        "nobody@example.com",
        "--subject",
        "s",
        "--text",
        "t",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(field(&stdout, "state"), Some("FAILED"), "{stdout}");
    assert!(
        field(&stdout, "last_error").is_some_and(|e| e.contains("550")),
        "{stdout}"
    );
    let id = field(&stdout, "id").expect("an id");
    let watched = cli.run(&["status", id, "--watch", "--json"]);
    assert_eq!(watched.status.code(), Some(1), "{}", describe(&watched));
    let last: Value = serde_json::from_str(
        String::from_utf8_lossy(&watched.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .expect("one JSON object per line");
    assert_eq!(last["state"], "NOTIFICATION_STATE_FAILED");
}

#[tokio::test]
async fn status_watch_follows_a_retry_until_delivery() {
    let smtp = PyServer::smtp(&["--tempfail-first", "1"]);
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(
        data.path(),
        &["--retry-initial", "300ms", "--retry-jitter", "0"],
        &[],
    )
    .await;
    let cli = Cli::new(&app);
    let port = smtp.port.to_string();
    cli.ok(&[
        "connection",
        "create",
        "relay",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--smtp-auth",
        "none",
        "--sender-address",
        "alerts@example.com",
        "--default",
    ]);
    let sent = cli.json(&[
        "send",
        "--to",
        "a@example.com",
        "--subject",
        "s",
        "--text",
        "t",
    ]);
    let id = sent["id"].as_str().expect("an id").to_owned();
    let watched = cli.ok(&["status", &id, "--watch"]);
    let last = watched.lines().last().unwrap_or_default();
    assert!(last.contains("DELIVERED"), "{watched}");
    assert!(
        last.contains("attempts=2"),
        "the 451 was retried: {watched}"
    );
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn test_of_an_unreachable_smtp_server_exits_1() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let port = free_port().to_string();
    cli.ok(&[
        "connection",
        "create",
        "nowhere",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--sender-address",
        "alerts@example.com",
    ]);
    let out = cli.run(&["connection", "test", "nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(field(&stdout, "ok"), Some("no"), "{stdout}");
    assert_eq!(field(&stdout, "stage"), Some("connect"), "{stdout}");
}

#[test]
fn an_unreachable_gateway_is_named_in_the_error() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["connection", "list", "--server", &server])
        .env_remove("NOTIGATE_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("running notigate");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "notigate: error: cannot connect to notigate at {server}"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_client_trusts_ca_cert_and_sends_the_bearer_token() {
    use tonic::transport::{Identity, Server, ServerTlsConfig};
    // A stand-in gateway: TLS with a certificate from a test CA, and a token
    // check in front of every call. Calls that pass the check reach a server
    // without ConnectionAdmin and are UNIMPLEMENTED.
    let (ca_pem, cert_pem, key_pem) = test_pki();
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(files.path(), "ca.pem", &ca_pem);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("https://{}", listener.local_addr().unwrap());
    let check = |request: tonic::Request<()>| match request.metadata().get("authorization") {
        Some(v) if v == "Bearer ngt_test" => Ok(request),
        _ => Err(tonic::Status::unauthenticated("missing or unknown token")),
    };
    let (_, health) = tonic_health::server::health_reporter();
    let gateway = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
        .expect("server TLS")
        .layer(tonic::service::InterceptorLayer::new(check))
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let gateway = tokio::spawn(gateway);

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["connection", "list"])
                .args(args)
                .env_remove("NOTIGATE_TOKEN")
                .stdin(Stdio::null())
                .output()
                .expect("running notigate")
        })
    };
    let args = |extra: &[&str]| {
        let mut a = vec!["--server".to_owned(), server.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let with_token = run(args(&["--ca-cert", &ca_file, "--token", "ngt_test"]))
        .await
        .unwrap();
    assert!(
        stderr(&with_token).starts_with("notigate: error: UNIMPLEMENTED: "),
        "TLS and token accepted: {}",
        describe(&with_token)
    );
    let without_token = run(args(&["--ca-cert", &ca_file])).await.unwrap();
    assert!(
        stderr(&without_token).starts_with("notigate: error: UNAUTHENTICATED: "),
        "{}",
        describe(&without_token)
    );
    let untrusted = run(args(&["--token", "ngt_test"])).await.unwrap();
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(
        stderr(&untrusted).starts_with(&format!(
            "notigate: error: cannot connect to notigate at {server}"
        )),
        "the test CA is not a public root: {}",
        describe(&untrusted)
    );
    gateway.abort();
}

/// A test CA and a certificate it signed for 127.0.0.1: (CA PEM, server
/// certificate PEM, server key PEM).
fn test_pki() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "notigate CLI test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn ca_cert_problems_are_reported_before_any_call() {
    let run = |server: &str, ca: &str| {
        Command::new(BIN)
            .args(["connection", "list", "--server", server, "--ca-cert", ca])
            .stdin(Stdio::null())
            .output()
            .expect("running notigate")
    };
    let missing = run("https://127.0.0.1:1", "/nonexistent/ca.pem");
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert!(
        stderr(&missing).starts_with("notigate: error: cannot read --ca-cert /nonexistent/ca.pem"),
        "{}",
        describe(&missing)
    );
    let plain = run("http://127.0.0.1:1", "/nonexistent/ca.pem");
    assert_eq!(plain.status.code(), Some(1), "{}", describe(&plain));
    assert!(
        stderr(&plain).contains("--ca-cert and --client-cert need an https:// --server"),
        "{}",
        describe(&plain)
    );
}

#[test]
fn token_create_stores_only_the_hash_and_prints_the_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let out = Command::new(BIN)
        .args(["token", "create", "--role", "admin", "--role", "sender"])
        .args(["--name", "ci-deploy", "--tokens-file"])
        .arg(&tokens)
        .env_remove("NOTIGATE_TOKENS_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("running notigate");
    assert!(out.status.success(), "{}", describe(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token.starts_with("ngt_"), "{token}");
    assert!(stderr(&out).contains("only once"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        !text.contains(&token),
        "the token itself must not be stored"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let parts: Vec<&str> = lines[0].split_whitespace().collect();
    assert!(
        parts[0].starts_with("sha256:") && parts[0].len() == 7 + 64,
        "{text}"
    );
    assert_eq!(&parts[1..], ["admin,sender", "ci-deploy"]);
    let parsed = notigate::auth::parse_tokens(&tokens, &text).expect("a valid tokens file");
    assert_eq!(parsed.len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&tokens).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let bad = Command::new(BIN)
        .args(["token", "create", "--role", "root", "--tokens-file"])
        .arg(&tokens)
        .output()
        .expect("running notigate");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a usage error: {}",
        describe(&bad)
    );
    assert!(stderr(&bad).contains("unknown role"), "{}", stderr(&bad));
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
