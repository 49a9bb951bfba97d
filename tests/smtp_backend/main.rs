//! The SMTP backend against a real SMTP server (aiosmtpd with PLAIN, LOGIN,
//! CRAM-MD5 and pyspnego-checked NTLM, STARTTLS and implicit TLS, fault
//! injection), asserting on what the server received.

mod helpers;

use std::time::Duration;

use helpers::*;
use notigate::{
    backend::{
        Backend, FailureKind,
        smtp::{PoolConfig, SmtpBackend},
    },
    domain::{Backend as ConnectionBackend, Priority, Secret, SmtpAuth, SmtpSettings, SmtpTls},
};
use serde_json::Value;

fn smtp_settings(connection: &mut notigate::domain::Connection) -> &mut SmtpSettings {
    match &mut connection.backend {
        ConnectionBackend::Smtp(s) => s,
        ConnectionBackend::Exchange(_) => unreachable!("test connections are SMTP"),
    }
}

async fn send_one(server: &SmtpServer, auth: SmtpAuth) -> Value {
    let connection = connection(settings(server.port, SmtpTls::None, auth));
    let backend = SmtpBackend::new();
    let delivery = backend
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .unwrap_or_else(|e| panic!("send failed: {e:?}\n{}", server.log()));
    assert!(
        delivery.provider_message_id.starts_with("250"),
        "{delivery:?}"
    );
    assert!(delivery.rejected.is_empty());
    server.single()
}

// ---------------------------------------------------------------- AUTH

#[tokio::test]
async fn plain_login_and_cram_md5_authenticate() {
    for (mechanism, auth) in [
        ("PLAIN", SmtpAuth::Plain),
        ("LOGIN", SmtpAuth::Login),
        ("CRAM-MD5", SmtpAuth::CramMd5),
    ] {
        let server = SmtpServer::start(&["--auth", mechanism, "--require-auth"]);
        let spooled = send_one(&server, auth).await;
        assert_eq!(spooled["auth_mechanism"], mechanism);
        assert_eq!(spooled["auth_user"], USER);
        assert_eq!(spooled["mail_from"], "noreply@example.com");
        assert_eq!(spooled["rcpt_tos"], serde_json::json!(["bob@example.com"]));
        assert_eq!(spooled["ehlo"], "client.test");
    }
}

#[tokio::test]
async fn ntlm_authenticates_with_the_domain_field() {
    let server = SmtpServer::start(&["--auth", "NTLM", "--require-auth"]);
    let mut connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Ntlm));
    // Lower case on purpose: the domain is sent upper-cased.
    smtp_settings(&mut connection).domain = "corp".into();
    SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.log()));
    let spooled = server.single();
    assert_eq!(spooled["auth_mechanism"], "NTLM");
    assert_eq!(spooled["auth_user"], "CORP\\alice");
}

#[tokio::test]
async fn ntlm_accepts_domain_backslash_user_and_a_lower_case_domain() {
    let server = SmtpServer::start(&["--auth", "NTLM", "--require-auth"]);
    // The domain is sent upper-cased (Cyrus SASL insists); a UPN user name
    // (user@suffix) goes with an empty domain and is covered by the
    // Exchange tests against the same NTLM acceptor.
    for (username, domain) in [("CORP\\alice", ""), ("alice", "corp")] {
        let mut connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Ntlm));
        smtp_settings(&mut connection).username = username.into();
        smtp_settings(&mut connection).domain = domain.into();
        SmtpBackend::new()
            .send(&connection, &message(&connection, &["bob@example.com"]))
            .await
            .unwrap_or_else(|e| panic!("{username}: {e:?}\n{}", server.log()));
    }
    let spool = server.spool();
    assert_eq!(spool.len(), 2);
    assert!(
        spool.iter().all(|s| s["auth_user"] == "CORP\\alice"),
        "{spool:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_failure_with_the_servers_reply() {
    for (mechanism, auth, reply) in [
        (
            "PLAIN",
            SmtpAuth::Plain,
            "535 5.7.8 Authentication credentials invalid",
        ),
        (
            "LOGIN",
            SmtpAuth::Login,
            "535 5.7.8 Authentication credentials invalid",
        ),
        (
            "CRAM-MD5",
            SmtpAuth::CramMd5,
            "535 5.7.8 Authentication credentials invalid",
        ),
        (
            "NTLM",
            SmtpAuth::Ntlm,
            "535 5.7.3 Authentication unsuccessful",
        ),
    ] {
        let server = SmtpServer::start(&["--auth", mechanism, "--require-auth"]);
        let mut connection = connection(settings(server.port, SmtpTls::None, auth));
        smtp_settings(&mut connection).domain = "CORP".into();
        smtp_settings(&mut connection).password = Some(Secret::new("wrong-Secret-9"));
        let err = SmtpBackend::new()
            .send(&connection, &message(&connection, &["bob@example.com"]))
            .await
            .expect_err("a wrong password must fail");
        assert_eq!(err.kind, FailureKind::Permanent, "{mechanism}: {err:?}");
        assert_eq!(
            err.message,
            format!("authentication rejected: {reply}"),
            "{mechanism}"
        );
        assert!(!err.message.contains("wrong-Secret-9"));
        assert!(server.spool().is_empty());
    }
}

#[tokio::test]
async fn negotiation_picks_ntlm_when_every_mechanism_is_offered() {
    let server = SmtpServer::start(&["--auth", "LOGIN,PLAIN,CRAM-MD5,NTLM", "--require-auth"]);
    let mut connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Negotiate));
    smtp_settings(&mut connection).domain = "CORP".into();
    SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.log()));
    assert_eq!(server.single()["auth_mechanism"], "NTLM");
}

#[tokio::test]
async fn negotiation_picks_cram_md5_when_ntlm_is_not_offered() {
    let server = SmtpServer::start(&["--auth", "LOGIN,PLAIN,CRAM-MD5", "--require-auth"]);
    let spooled = send_one(&server, SmtpAuth::Negotiate).await;
    assert_eq!(spooled["auth_mechanism"], "CRAM-MD5");
}

#[tokio::test]
async fn negotiation_with_a_username_never_sends_without_auth() {
    // No --auth: the server advertises no AUTH at all.
    let server = SmtpServer::start(&[]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Negotiate));
    let err = SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect_err("must not send without AUTH");
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.contains("advertises no AUTH"), "{err}");
    assert!(server.spool().is_empty());
}

#[tokio::test]
async fn no_username_means_no_auth() {
    let server = SmtpServer::start(&["--auth", "PLAIN"]);
    let mut connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Negotiate));
    smtp_settings(&mut connection).username.clear();
    smtp_settings(&mut connection).password = None;
    SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect("relay without AUTH");
    assert_eq!(server.single()["auth_mechanism"], Value::Null);
}

// ------------------------------------------------------------ delivery

#[tokio::test]
async fn a_temporary_failure_is_transient_and_the_next_attempt_delivers() {
    let server = SmtpServer::start(&["--tempfail-first", "1"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let backend = SmtpBackend::new();
    let msg = message(&connection, &["bob@example.com"]);
    let err = backend
        .send(&connection, &msg)
        .await
        .expect_err("451 first");
    assert_eq!(err.kind, FailureKind::Transient);
    assert!(
        err.message
            .contains("451 4.3.0 Temporary local problem, try again later"),
        "{err}"
    );
    backend
        .send(&connection, &msg)
        .await
        .expect("then delivered");
    assert_eq!(server.spool().len(), 1);
}

#[tokio::test]
async fn one_refused_recipient_is_reported_while_the_others_get_the_mail() {
    let server = SmtpServer::start(&["--fail-rcpt", "nobody@example.com"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let delivery = SmtpBackend::new()
        .send(
            &connection,
            &message(&connection, &["bob@example.com", "nobody@example.com"]),
        )
        .await
        .expect("delivered to bob");
    assert_eq!(delivery.rejected.len(), 1);
    assert_eq!(delivery.rejected[0].address, "nobody@example.com");
    assert_eq!(
        delivery.rejected[0].reply,
        "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    );
    assert_eq!(delivery.provider_message_id, "250 2.0.0 OK: queued");
    assert_eq!(
        server.single()["rcpt_tos"],
        serde_json::json!(["bob@example.com"])
    );
}

#[tokio::test]
async fn every_recipient_refused_is_permanent() {
    let server = SmtpServer::start(&[
        "--fail-rcpt",
        "a@example.com",
        "--fail-rcpt",
        "b@example.com",
    ]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let err = SmtpBackend::new()
        .send(
            &connection,
            &message(&connection, &["a@example.com", "b@example.com"]),
        )
        .await
        .expect_err("nobody accepted");
    assert_eq!(err.kind, FailureKind::Permanent);
    assert_eq!(err.rejected.len(), 2);
    assert!(
        err.rejected
            .iter()
            .all(|r| r.reply.starts_with("550 5.1.1"))
    );
    assert!(err.message.contains("every recipient was refused"), "{err}");
    assert!(server.spool().is_empty());
}

#[tokio::test]
async fn pipelined_transactions_report_each_recipient_and_reuse_the_session() {
    let server = SmtpServer::start(&["--pipelining", "--fail-rcpt", "nobody@example.com"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let backend = SmtpBackend::new();
    for _ in 0..2 {
        let delivery = backend
            .send(
                &connection,
                &message(&connection, &["bob@example.com", "nobody@example.com"]),
            )
            .await
            .expect("delivered to bob");
        assert_eq!(delivery.rejected.len(), 1);
        assert_eq!(delivery.rejected[0].address, "nobody@example.com");
        assert_eq!(delivery.provider_message_id, "250 2.0.0 OK: queued");
    }
    let spool = server.spool();
    assert_eq!(spool.len(), 2);
    assert_eq!(spool[0]["rcpt_tos"], serde_json::json!(["bob@example.com"]));
    assert_eq!(spool[0]["peer"], spool[1]["peer"], "one session for both");
}

#[tokio::test]
async fn pipelined_every_recipient_refused_is_permanent_and_nothing_is_sent() {
    let server = SmtpServer::start(&[
        "--pipelining",
        "--fail-rcpt",
        "a@example.com",
        "--fail-rcpt",
        "b@example.com",
    ]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let backend = SmtpBackend::new();
    let err = backend
        .send(
            &connection,
            &message(&connection, &["a@example.com", "b@example.com"]),
        )
        .await
        .expect_err("nobody accepted");
    assert_eq!(err.kind, FailureKind::Permanent);
    assert_eq!(err.rejected.len(), 2);
    assert!(server.spool().is_empty());
    // The next message gets a clean session.
    let delivery = backend
        .send(&connection, &message(&connection, &["c@example.com"]))
        .await
        .expect("delivered");
    assert!(delivery.rejected.is_empty());
    assert_eq!(server.spool().len(), 1);
}

#[tokio::test]
async fn a_connection_lost_in_data_is_transient_and_a_new_session_delivers() {
    let server = SmtpServer::start(&["--disconnect-in-data-first", "1"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let backend = SmtpBackend::new();
    let msg = message(&connection, &["bob@example.com"]);
    let err = backend.send(&connection, &msg).await.expect_err("reset");
    assert_eq!(err.kind, FailureKind::Transient, "{err:?}");
    assert_eq!(backend.idle_sessions("test_smtp"), 0, "broken session kept");
    backend.send(&connection, &msg).await.expect("delivered");
    assert_eq!(server.spool().len(), 1);
}

#[tokio::test]
async fn a_421_greeting_is_transient() {
    let server = SmtpServer::start(&["--greeting-421"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let err = SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect_err("421");
    assert_eq!(err.kind, FailureKind::Transient);
    assert!(
        err.message.contains("421 4.3.2 Service not available"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rejected_message_is_permanent() {
    let server = SmtpServer::start(&["--reject-all-data"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let err = SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect_err("554");
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.contains("554 5.7.1 Message rejected"), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out_transiently() {
    // Accepts the TCP connection and never greets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut connection = connection(settings(port, SmtpTls::None, SmtpAuth::None));
    smtp_settings(&mut connection).timeout = Some(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let err = SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect_err("timeout");
    assert_eq!(err.kind, FailureKind::Transient);
    assert!(err.message.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

#[tokio::test]
async fn bcc_recipients_get_the_mail_without_a_header() {
    let server = SmtpServer::start(&[]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let mut msg = message(&connection, &["bob@example.com"]);
    msg.cc = vec![mailbox("carol@example.com", "Carol")];
    msg.bcc = vec![mailbox("hidden@example.com", "")];
    SmtpBackend::new()
        .send(&connection, &msg)
        .await
        .expect("delivered");
    let spooled = server.single();
    assert_eq!(
        spooled["rcpt_tos"],
        serde_json::json!(["bob@example.com", "carol@example.com", "hidden@example.com"])
    );
    let data = spooled["data"].as_str().expect("data");
    assert!(!data.contains("hidden@example.com"));
    let parsed = parse_with_python(&spooled);
    assert_eq!(parsed["headers"]["Bcc"], Value::Null);
    assert_eq!(
        parsed["cc"],
        serde_json::json!([["Carol", "carol@example.com"]])
    );
}

// ----------------------------------------------------------------- TLS

#[tokio::test]
async fn starttls_with_the_connections_ca() {
    let pki = TestPki::new();
    let args = pki.server_args("starttls");
    let server = SmtpServer::start(
        &args
            .iter()
            .map(String::as_str)
            .chain(["--auth", "PLAIN", "--require-auth"])
            .collect::<Vec<_>>(),
    );
    let mut settings = settings(server.port, SmtpTls::StartTls, SmtpAuth::Plain);
    settings.trusted_ca_pem = pki.ca_pem.clone();
    let connection = connection(settings);
    SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.log()));
    let spooled = server.single();
    assert_eq!(spooled["tls"], true);
    assert_eq!(spooled["auth_mechanism"], "PLAIN");
}

#[tokio::test]
async fn implicit_tls_with_the_connections_ca() {
    let pki = TestPki::new();
    let args = pki.server_args("implicit");
    let server = SmtpServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut settings = settings(server.port, SmtpTls::Implicit, SmtpAuth::None);
    settings.trusted_ca_pem = pki.ca_pem.clone();
    let connection = connection(settings);
    SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.log()));
    assert_eq!(server.single()["tls"], true);
}

#[tokio::test]
async fn an_untrusted_certificate_is_permanent_unless_explicitly_accepted() {
    let pki = TestPki::new();
    for mode in ["starttls", "implicit"] {
        let args = pki.server_args(mode);
        let server = SmtpServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let tls = if mode == "starttls" {
            SmtpTls::StartTls
        } else {
            SmtpTls::Implicit
        };
        // No trusted_ca_pem: the test CA is not among the system roots.
        let mut connection = connection(settings(server.port, tls, SmtpAuth::None));
        let backend = SmtpBackend::new();
        let msg = message(&connection, &["bob@example.com"]);
        let err = backend
            .send(&connection, &msg)
            .await
            .expect_err("untrusted");
        assert_eq!(err.kind, FailureKind::Permanent, "{mode}: {err:?}");
        assert!(err.message.contains("certificate"), "{err}");
        assert!(err.message.contains("trusted_ca_pem"), "{err}");
        assert!(err.message.contains("accept_invalid_certs"), "{err}");

        smtp_settings(&mut connection).accept_invalid_certs = true;
        backend
            .send(&connection, &msg)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e:?}"));
        assert_eq!(server.single()["tls"], true);
    }
}

#[tokio::test]
async fn starttls_required_but_not_offered_is_permanent() {
    let server = SmtpServer::start(&[]);
    let connection = connection(settings(server.port, SmtpTls::StartTls, SmtpAuth::None));
    let err = SmtpBackend::new()
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect_err("no STARTTLS");
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.contains("does not offer STARTTLS"), "{err}");
    assert!(server.spool().is_empty());
}

#[tokio::test]
async fn opportunistic_tls_uses_starttls_when_offered_and_plain_otherwise() {
    let pki = TestPki::new();
    let args = pki.server_args("starttls");
    let with_tls = SmtpServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let without_tls = SmtpServer::start(&[]);
    for (server, expected_tls) in [(&with_tls, true), (&without_tls, false)] {
        let mut settings = settings(server.port, SmtpTls::Opportunistic, SmtpAuth::None);
        settings.trusted_ca_pem = pki.ca_pem.clone();
        let connection = connection(settings);
        SmtpBackend::new()
            .send(&connection, &message(&connection, &["bob@example.com"]))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(server.single()["tls"], expected_tls);
    }
}

// ---------------------------------------------------------------- MIME

#[tokio::test]
async fn cyrillic_names_and_subject_reach_the_receiver_intact() {
    let server = SmtpServer::start(&[]);
    let mut connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    connection.sender = mailbox("noreply@example.com", "Служба уведомлений");
    let mut msg = message(&connection, &[]);
    msg.to = vec![mailbox("ivan@example.com", "Иван Петров")];
    msg.reply_to = vec![mailbox("support@example.com", "Поддержка, 2-я линия")];
    msg.subject = "Счёт № 42 оплачен — спасибо!".into();
    msg.text_body = Some("Здравствуйте, Иван!\nОплата получена.".into());
    msg.priority = Priority::High;
    SmtpBackend::new()
        .send(&connection, &msg)
        .await
        .expect("delivered");
    let parsed = parse_with_python(&server.single());
    assert_eq!(parsed["subject"], "Счёт № 42 оплачен — спасибо!");
    assert_eq!(
        parsed["from"],
        serde_json::json!([["Служба уведомлений", "noreply@example.com"]])
    );
    assert_eq!(
        parsed["to"],
        serde_json::json!([["Иван Петров", "ivan@example.com"]])
    );
    assert_eq!(
        parsed["reply_to"],
        serde_json::json!([["Поддержка, 2-я линия", "support@example.com"]])
    );
    assert_eq!(parsed["headers"]["Importance"], "high");
    assert_eq!(parsed["headers"]["X-Priority"], "1");
    assert_eq!(
        parsed["headers"]["Message-ID"],
        format!("<{}@example.com>", msg.id)
    );
    assert_eq!(
        parsed["tree"]["text"],
        "Здравствуйте, Иван!\nОплата получена."
    );
    assert_eq!(parsed["defects"], serde_json::json!([]));
}

#[tokio::test]
async fn text_html_inline_and_attachment_arrive_in_the_expected_structure() {
    let server = SmtpServer::start(&[]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let mut msg = message(&connection, &["bob@example.com"]);
    msg.text_body = Some("See the logo.".into());
    msg.html_body = Some("<p>See <img src=\"cid:logo@notigate\"></p>".into());
    let png = [
        0x89u8, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13,
    ];
    let report: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    msg.attachments = vec![
        attachment("logo.png", "image/png", &png, Some("logo@notigate")),
        attachment("отчёт за март.pdf", "application/pdf", &report, None),
    ];
    msg.headers = vec![
        (
            "List-Unsubscribe".into(),
            "<mailto:unsubscribe@example.com>".into(),
        ),
        ("X-Campaign".into(), "march".into()),
    ];
    SmtpBackend::new()
        .send(&connection, &msg)
        .await
        .expect("delivered");
    let spooled = server.single();
    let raw = spooled["data"].as_str().expect("data");
    assert!(raw.split("\r\n").all(|line| line.len() <= 998));
    let parsed = parse_with_python(&spooled);
    let tree = &parsed["tree"];
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);

    assert_eq!(tree["type"], "multipart/mixed");
    let alternative = &tree["parts"][0];
    assert_eq!(alternative["type"], "multipart/alternative");
    assert_eq!(alternative["parts"][0]["type"], "text/plain");
    assert_eq!(alternative["parts"][0]["text"], "See the logo.");
    let related = &alternative["parts"][1];
    assert_eq!(related["type"], "multipart/related");
    assert_eq!(related["parts"][0]["type"], "text/html");
    let inline = &related["parts"][1];
    assert_eq!(inline["type"], "image/png");
    assert_eq!(inline["content_id"], "<logo@notigate>");
    assert_eq!(inline["disposition"], "inline");
    assert_eq!(inline["bytes_b64"], b64(&png));
    let pdf = &tree["parts"][1];
    assert_eq!(pdf["type"], "application/pdf");
    assert_eq!(pdf["disposition"], "attachment");
    assert_eq!(pdf["filename"], "отчёт за март.pdf");
    assert_eq!(pdf["bytes_b64"], b64(&report));
    assert_eq!(
        parsed["headers"]["List-Unsubscribe"],
        "<mailto:unsubscribe@example.com>"
    );
    assert_eq!(parsed["headers"]["X-Campaign"], "march");
    assert_eq!(parsed["defects"], serde_json::json!([]));
}

// ------------------------------------------------------ session reuse

#[tokio::test]
async fn sessions_are_reused_across_messages_until_the_settings_change() {
    let server = SmtpServer::start(&["--auth", "PLAIN", "--require-auth"]);
    let mut connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Plain));
    let backend = SmtpBackend::new();
    for _ in 0..3 {
        backend
            .send(&connection, &message(&connection, &["bob@example.com"]))
            .await
            .expect("delivered");
    }
    assert_eq!(backend.idle_sessions("test_smtp"), 1);

    // New settings (another EHLO name): the kept session is not reused.
    smtp_settings(&mut connection).hello_name = "other.test".into();
    backend
        .send(&connection, &message(&connection, &["bob@example.com"]))
        .await
        .expect("delivered");

    let spool = server.spool();
    let peers: Vec<&Value> = spool.iter().map(|s| &s["peer"][1]).collect();
    assert_eq!(peers[0], peers[1], "second message on the same session");
    assert_eq!(peers[1], peers[2], "third message on the same session");
    assert_ne!(peers[2], peers[3], "new settings, new session");
    assert_eq!(spool[3]["ehlo"], "other.test");
    assert!(spool.iter().all(|s| s["auth_mechanism"] == "PLAIN"));

    backend.forget("test_smtp").await;
    assert_eq!(backend.idle_sessions("test_smtp"), 0);
}

#[tokio::test]
async fn a_session_closed_by_the_server_is_replaced_transparently() {
    let server = SmtpServer::start(&[]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let backend = SmtpBackend::new();
    let msg = message(&connection, &["bob@example.com"]);
    backend.send(&connection, &msg).await.expect("first");
    assert_eq!(backend.idle_sessions("test_smtp"), 1);
    // Restart the server on the same port: the kept session is dead.
    let port = server.port;
    drop(server);
    let args = ["--host", "127.0.0.1"];
    let restarted = start_on_port(port, &args);
    backend
        .send(&connection, &msg)
        .await
        .expect("second, on a new session");
    assert_eq!(restarted.spool().len(), 1);
}

#[tokio::test]
async fn idle_sessions_are_bounded_in_number_and_time() {
    let server = SmtpServer::start(&[]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let msg = message(&connection, &["bob@example.com"]);

    let none_kept = SmtpBackend::with_pool_config(PoolConfig {
        max_idle_per_connection: 0,
        idle_timeout: Duration::from_secs(60),
    });
    none_kept.send(&connection, &msg).await.expect("delivered");
    assert_eq!(none_kept.idle_sessions("test_smtp"), 0);

    let short_lived = SmtpBackend::with_pool_config(PoolConfig {
        max_idle_per_connection: 4,
        idle_timeout: Duration::from_millis(50),
    });
    short_lived
        .send(&connection, &msg)
        .await
        .expect("delivered");
    tokio::time::sleep(Duration::from_millis(100)).await;
    short_lived
        .send(&connection, &msg)
        .await
        .expect("delivered");
    let spool = server.spool();
    assert_eq!(spool.len(), 3);
    assert_ne!(
        spool[1]["peer"][1], spool[2]["peer"][1],
        "an expired session is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_each_get_a_session_and_at_most_four_are_kept() {
    let server = SmtpServer::start(&["--auth", "PLAIN", "--require-auth"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::Plain));
    let backend = std::sync::Arc::new(SmtpBackend::new());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let backend = backend.clone();
            let connection = connection.clone();
            tokio::spawn(async move {
                let msg = message(&connection, &["bob@example.com"]);
                backend.send(&connection, &msg).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("delivered");
    }
    assert_eq!(server.spool().len(), 6);
    assert!(backend.idle_sessions("test_smtp") <= 4);
}

#[tokio::test]
async fn a_message_over_the_servers_size_limit_is_refused_before_sending() {
    let server = SmtpServer::start(&["--max-size", "2000"]);
    let connection = connection(settings(server.port, SmtpTls::None, SmtpAuth::None));
    let mut msg = message(&connection, &["bob@example.com"]);
    msg.text_body = Some("x".repeat(5000));
    let err = SmtpBackend::new()
        .send(&connection, &msg)
        .await
        .expect_err("too large");
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.contains("at most 2000"), "{err}");
}

/// `SmtpServer::start` picks a free port; this restarts on a known one.
fn start_on_port(port: u16, args: &[&str]) -> SmtpServer {
    let port_arg = port.to_string();
    let mut all: Vec<&str> = vec!["--port", &port_arg];
    all.extend_from_slice(args);
    SmtpServer::start(&all)
}

// ------------------------------------------------------ TestConnection

#[tokio::test]
async fn test_connection_reports_success_at_the_sender_stage() {
    let pki = TestPki::new();
    let args = pki.server_args("starttls");
    let server = SmtpServer::start(
        &args
            .iter()
            .map(String::as_str)
            .chain(["--auth", "CRAM-MD5", "--require-auth"])
            .collect::<Vec<_>>(),
    );
    let mut settings = settings(server.port, SmtpTls::StartTls, SmtpAuth::Negotiate);
    settings.trusted_ca_pem = pki.ca_pem.clone();
    let report = SmtpBackend::new().test(&connection(settings)).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.stage, "sender");
    assert!(
        report.detail.contains("<noreply@example.com>"),
        "{report:?}"
    );
    assert!(report.detail.contains("AUTH CRAM-MD5"), "{report:?}");
    assert!(report.detail.contains("TLS"), "{report:?}");
    assert!(server.spool().is_empty(), "a test sends no mail");
}

#[tokio::test]
async fn test_connection_with_a_wrong_password_fails_at_auth() {
    let server = SmtpServer::start(&["--auth", "LOGIN", "--require-auth"]);
    let mut settings = settings(server.port, SmtpTls::None, SmtpAuth::Login);
    settings.password = Some(Secret::new("not-it"));
    let report = SmtpBackend::new().test(&connection(settings)).await;
    assert!(!report.ok);
    assert_eq!(report.stage, "auth");
    assert!(report.detail.contains("535 5.7.8"), "{report:?}");
}

#[tokio::test]
async fn test_connection_to_a_closed_port_fails_at_connect() {
    // Bind and release a port so that nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    for tls in [SmtpTls::None, SmtpTls::Implicit] {
        let report = SmtpBackend::new()
            .test(&connection(settings(port, tls, SmtpAuth::None)))
            .await;
        assert!(!report.ok);
        assert_eq!(report.stage, "connect", "{tls:?}: {report:?}");
        assert!(report.detail.contains("refused"), "{report:?}");
    }
}

#[tokio::test]
async fn test_connection_fails_at_tls_when_starttls_is_required_but_not_offered() {
    let server = SmtpServer::start(&[]);
    let report = SmtpBackend::new()
        .test(&connection(settings(
            server.port,
            SmtpTls::StartTls,
            SmtpAuth::None,
        )))
        .await;
    assert!(!report.ok);
    assert_eq!(report.stage, "tls");
    assert!(report.detail.contains("STARTTLS"), "{report:?}");
}

#[tokio::test]
async fn test_connection_fails_at_tls_for_an_untrusted_implicit_tls_certificate() {
    let pki = TestPki::new();
    let args = pki.server_args("implicit");
    let server = SmtpServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let report = SmtpBackend::new()
        .test(&connection(settings(
            server.port,
            SmtpTls::Implicit,
            SmtpAuth::None,
        )))
        .await;
    assert!(!report.ok);
    assert_eq!(report.stage, "tls", "{report:?}");
    assert!(report.detail.contains("trusted_ca_pem"), "{report:?}");
}

#[tokio::test]
async fn test_connection_fails_at_sender_when_mail_from_is_refused() {
    // --require-auth without AUTH credentials: MAIL FROM gets 530.
    let server = SmtpServer::start(&["--auth", "PLAIN", "--require-auth"]);
    let report = SmtpBackend::new()
        .test(&connection(settings(
            server.port,
            SmtpTls::None,
            SmtpAuth::None,
        )))
        .await;
    assert!(!report.ok);
    assert_eq!(report.stage, "sender");
    assert!(report.detail.contains("530"), "{report:?}");
}
