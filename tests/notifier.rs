//! Notifier: Send into the durable outbox, delivery through a real SMTP
//! server (tests/servers/smtp_server.py), retries, and the status RPCs.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, servers::PyServer, servers::parse_mime};
use notigate::pb::{self, NotificationState as S};
use tonic::{Code, Request};

/// A connection to the test SMTP server on `port`: plain text, no AUTH.
fn relay(name: &str, port: u16) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        log_level: pb::LogLevel::Full as i32,
        sender: Some(pb::Address {
            address: "alerts@example.com".into(),
            display_name: "Оповещения".into(),
        }),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: u32::from(port),
            tls: pb::SmtpTls::None as i32,
            auth: pb::SmtpAuth::None as i32,
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn with_auth(
    mut c: pb::Connection,
    auth: pb::SmtpAuth,
    user: &str,
    password: &str,
) -> pb::Connection {
    if let Some(pb::connection::Backend::Smtp(s)) = &mut c.backend {
        s.auth = auth as i32;
        s.username = user.into();
        s.password = password.into();
        s.domain = "CORP".into();
    }
    c
}

fn addr(address: &str, name: &str) -> pb::Address {
    pb::Address {
        address: address.into(),
        display_name: name.into(),
    }
}

fn message(to: &str) -> pb::EmailMessage {
    pb::EmailMessage {
        to: vec![addr(to, "")],
        subject: "Disk full".into(),
        text_body: "/var is 97% full".into(),
        ..Default::default()
    }
}

fn send_request(connection: &str, message: pb::EmailMessage) -> pb::SendRequest {
    pb::SendRequest {
        connection: connection.into(),
        message: Some(message),
        ..Default::default()
    }
}

async fn send(app: &TestApp, req: pb::SendRequest) -> Result<pb::SendResponse, tonic::Status> {
    app.notifier.clone().send(req).await.map(|r| r.into_inner())
}

async fn send_ok(app: &TestApp, req: pb::SendRequest) -> String {
    send(app, req).await.expect("Send").id
}

async fn get(app: &TestApp, id: &str) -> pb::Notification {
    app.notifier
        .clone()
        .get_notification(pb::GetNotificationRequest { id: id.into() })
        .await
        .expect("GetNotification")
        .into_inner()
}

/// Polls until the notification is in `state` (hang guard: 60 s).
async fn wait_state(app: &TestApp, id: &str, state: S) -> pb::Notification {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = get(app, id).await;
        let final_state =
            [S::Delivered as i32, S::Failed as i32, S::Canceled as i32].contains(&n.state);
        if n.state == state as i32 || final_state || Instant::now() > deadline {
            assert_eq!(
                S::try_from(n.state).ok(),
                Some(state),
                "notification {id} did not reach {state:?}: {n:?}"
            );
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_invalid(err: tonic::Status, fields: &[&str]) {
    common::assert_invalid(Err::<(), _>(err), fields);
}

fn fast_retries() -> Vec<&'static str> {
    vec!["--retry-initial", "100ms", "--retry-max-delay", "200ms"]
}

async fn spawn_fast() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("data dir");
    let app = TestApp::spawn_with(dir.path(), &fast_retries(), &[]).await;
    (app, dir)
}

// ---------------------------------------------------------------------------
// Validation and resolution (no mail server needed)

#[tokio::test]
async fn send_refuses_invalid_messages_naming_each_field() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9)).await;
    let cases: Vec<(pb::EmailMessage, &[&str])> = vec![
        (
            pb::EmailMessage {
                text_body: "x".into(),
                ..Default::default()
            },
            &["message.to"],
        ),
        (
            pb::EmailMessage {
                to: vec![addr("a@example.com", "")],
                ..Default::default()
            },
            &["message.text_body"],
        ),
        (
            pb::EmailMessage {
                to: vec![addr("not-an-address", "")],
                cc: vec![addr("b@example.com", "Evil\r\nBcc: x@example.com")],
                text_body: "x".into(),
                ..Default::default()
            },
            &["message.to[0].address", "message.cc[0].display_name"],
        ),
        (
            pb::EmailMessage {
                subject: "hi\r\nBcc: victim@example.com".into(),
                ..message("a@example.com")
            },
            &["message.subject"],
        ),
        (
            pb::EmailMessage {
                headers: [
                    ("From".to_string(), "boss@example.com".to_string()),
                    ("X-Ok".to_string(), "line\nInjected: yes".to_string()),
                ]
                .into(),
                ..message("a@example.com")
            },
            &["message.headers[From]", "message.headers[X-Ok]"],
        ),
        (
            pb::EmailMessage {
                attachments: vec![pb::Attachment {
                    filename: "a\r\n.txt".into(),
                    content_type: "not a type".into(),
                    content: b"x".to_vec(),
                    content_id: "has space".into(),
                }],
                ..message("a@example.com")
            },
            &[
                "message.attachments[0].filename",
                "message.attachments[0].content_type",
                "message.attachments[0].content_id",
            ],
        ),
        (
            pb::EmailMessage {
                priority: 42,
                ..message("a@example.com")
            },
            &["message.priority"],
        ),
    ];
    for (m, fields) in cases {
        let err = send(&app, send_request("main", m))
            .await
            .expect_err("must be refused");
        assert_invalid(err, fields);
    }
    let listed = app
        .notifier
        .clone()
        .list_notifications(pb::ListNotificationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.notifications.is_empty(),
        "a refused Send stored something"
    );
}

#[tokio::test]
async fn send_over_the_size_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().expect("dir");
    let app = TestApp::spawn_with(dir.path(), &["--max-message-size", "1KiB"], &[]).await;
    app.create_ok(relay("main", 9)).await;
    let mut m = message("a@example.com");
    m.attachments.push(pb::Attachment {
        filename: "big.bin".into(),
        content: vec![7; 2000],
        ..Default::default()
    });
    let err = send(&app, send_request("main", m))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit is 1024"), "{}", err.message());
}

#[tokio::test]
async fn a_message_just_over_the_default_25_mib_gets_the_precise_error() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9)).await;
    let mut m = message("a@example.com");
    m.attachments.push(pb::Attachment {
        filename: "big.bin".into(),
        content: vec![0; 25 * 1024 * 1024 + 1],
        ..Default::default()
    });
    let err = send(&app, send_request("main", m))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn too_many_recipients_are_refused() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9)).await;
    let mut m = message("a@example.com");
    m.bcc = (0..100)
        .map(|i| addr(&format!("r{i}@example.com"), ""))
        .collect();
    let err = send(&app, send_request("main", m))
        .await
        .expect_err("101 recipients");
    assert_invalid(err, &["message.to"]);
}

#[tokio::test]
async fn send_resolves_the_connection_or_says_why_not() {
    let app = TestApp::spawn().await;
    let err = send(&app, send_request("", message("a@example.com")))
        .await
        .expect_err("no default");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = send(&app, send_request("nope", message("a@example.com")))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = send(&app, send_request("bad name", message("a@example.com")))
        .await
        .expect_err("invalid name");
    assert_invalid(err, &["connection"]);
    let mut disabled = relay("off", 9);
    disabled.disabled = true;
    app.create_ok(disabled).await;
    let err = send(&app, send_request("off", message("a@example.com")))
        .await
        .expect_err("disabled");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("disabled"), "{}", err.message());
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_told_apart() {
    let app = TestApp::spawn().await;
    let err = app
        .notifier
        .clone()
        .get_notification(pb::GetNotificationRequest {
            id: "0192f0c2-0000-7000-8000-000000000000".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .notifier
        .clone()
        .get_notification(pb::GetNotificationRequest { id: "x".into() })
        .await
        .expect_err("malformed");
    assert_invalid(err, &["id"]);
    let err = app
        .notifier
        .clone()
        .list_notifications(pb::ListNotificationsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("garbage token");
    assert_invalid(err, &["page_token"]);
}

// ---------------------------------------------------------------------------
// Delivery through a real SMTP server

#[tokio::test]
async fn a_sent_message_is_delivered_with_cyrillic_names_and_subject_decoded() {
    let smtp = PyServer::smtp(&[]);
    let app = TestApp::spawn().await;
    let mut c = relay("main", smtp.port);
    c.is_default = true;
    app.create_ok(c).await;
    let m = pb::EmailMessage {
        to: vec![addr("ivan@example.com", "Иван Петров")],
        cc: vec![addr("cc@example.com", "")],
        bcc: vec![addr("hidden@example.com", "")],
        reply_to: vec![addr("support@example.com", "Поддержка")],
        subject: "Отчёт готов — проверьте".into(),
        text_body: "Привет!".into(),
        headers: [("X-Ticket".to_string(), "42".to_string())].into(),
        priority: pb::Priority::High as i32,
        ..Default::default()
    };
    let id = send_ok(&app, send_request("", m)).await;
    let n = wait_state(&app, &id, S::Delivered).await;
    assert_eq!(n.attempts, 1);
    assert_eq!(n.connection, "main");
    let got = smtp.wait_received(1);
    assert_eq!(got.len(), 1);
    let rec = &got[0];
    assert_eq!(rec["mail_from"], "alerts@example.com");
    let mut rcpts: Vec<String> = rec["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["cc@example.com", "hidden@example.com", "ivan@example.com"]
    );
    let raw = base64_decode(rec["data_b64"].as_str().unwrap());
    let parsed = parse_mime(&raw);
    let h = &parsed["headers"];
    assert_eq!(h["Subject"], "Отчёт готов — проверьте");
    assert_eq!(h["From"], "Оповещения <alerts@example.com>");
    assert_eq!(h["To"], "Иван Петров <ivan@example.com>");
    assert_eq!(h["Reply-To"], "Поддержка <support@example.com>");
    assert_eq!(h["X-Ticket"], "42");
    assert!(h.get("Bcc").is_none(), "Bcc leaked into the headers: {h}");
    assert!(h["Message-ID"].as_str().unwrap().contains(&id), "{h}");
    assert_eq!(
        parsed["tree"]["text"].as_str().unwrap().trim_end(),
        "Привет!"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

#[tokio::test]
async fn text_html_attachment_and_inline_parts_arrive_structured() {
    let smtp = PyServer::smtp(&[]);
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", smtp.port)).await;
    let m = pb::EmailMessage {
        html_body: "<p>Chart: <img src=\"cid:chart1\"></p>".into(),
        attachments: vec![
            pb::Attachment {
                filename: "отчёт.pdf".into(),
                content_type: "application/pdf".into(),
                content: vec![0x25, 0x50, 0x44, 0x46, 0xff, 0x00, 0x10],
                content_id: String::new(),
            },
            pb::Attachment {
                filename: "chart.png".into(),
                content_type: "image/png".into(),
                content: vec![0x89, 0x50, 0x4e, 0x47],
                content_id: "chart1".into(),
            },
        ],
        ..message("a@example.com")
    };
    let id = send_ok(&app, send_request("main", m)).await;
    wait_state(&app, &id, S::Delivered).await;
    let raw = base64_decode(smtp.wait_received(1)[0]["data_b64"].as_str().unwrap());
    let tree = &parse_mime(&raw)["tree"];
    let text = tree.to_string();
    assert_eq!(tree["content_type"], "multipart/mixed", "{text}");
    assert!(text.contains("multipart/alternative"), "{text}");
    assert!(text.contains("multipart/related"), "{text}");
    assert!(text.contains("\"filename\":\"отчёт.pdf\""), "{text}");
    assert!(text.contains("<chart1>"), "{text}");
    assert!(text.contains("/var is 97% full"), "{text}");
}

#[tokio::test]
async fn each_auth_mechanism_delivers_and_a_wrong_password_fails_with_the_server_words() {
    let users = tempfile::NamedTempFile::new().expect("users file");
    std::fs::write(users.path(), "CORP:mailer:s3cret-Pass\n").expect("write users");
    let users_path = users.path().to_str().unwrap().to_owned();
    let smtp = PyServer::smtp(&[
        "--auth",
        "PLAIN,LOGIN,CRAM-MD5,NTLM",
        "--users",
        &users_path,
        "--require-auth",
    ]);
    let app = TestApp::spawn().await;
    let mechanisms = [
        (pb::SmtpAuth::Plain, "PLAIN"),
        (pb::SmtpAuth::Login, "LOGIN"),
        (pb::SmtpAuth::CramMd5, "CRAM-MD5"),
        (pb::SmtpAuth::Ntlm, "NTLM"),
        (pb::SmtpAuth::Unspecified, "NTLM"),
    ];
    for (i, (auth, expected)) in mechanisms.iter().enumerate() {
        let name = format!("m{i}");
        app.create_ok(with_auth(
            relay(&name, smtp.port),
            *auth,
            "mailer",
            "s3cret-Pass",
        ))
        .await;
        let id = send_ok(&app, send_request(&name, message("a@example.com"))).await;
        wait_state(&app, &id, S::Delivered).await;
        let got = smtp.wait_received(i + 1);
        assert_eq!(got[i]["auth_mechanism"], *expected, "{auth:?}: {}", got[i]);
    }
    app.create_ok(with_auth(
        relay("wrong", smtp.port),
        pb::SmtpAuth::Plain,
        "mailer",
        "nope",
    ))
    .await;
    let id = send_ok(&app, send_request("wrong", message("a@example.com"))).await;
    let n = wait_state(&app, &id, S::Failed).await;
    assert!(n.last_error.contains("535"), "{}", n.last_error);
    assert!(
        !n.last_error.contains("nope"),
        "password leaked: {}",
        n.last_error
    );
}

#[tokio::test]
async fn a_temporary_failure_is_retried_until_delivered() {
    let smtp = PyServer::smtp(&["--tempfail-first", "2"]);
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("main", smtp.port)).await;
    let id = send_ok(&app, send_request("main", message("a@example.com"))).await;
    let n = wait_state(&app, &id, S::Delivered).await;
    assert_eq!(n.attempts, 3, "{n:?}");
    assert!(n.last_error.contains("451"), "{n:?}");
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn retrying_stops_at_the_attempt_limit_with_the_last_error() {
    let smtp = PyServer::smtp(&["--tempfail-first", "100"]);
    let dir = tempfile::tempdir().expect("dir");
    let mut args = fast_retries();
    args.extend(["--retry-max-attempts", "3"]);
    let app = TestApp::spawn_with(dir.path(), &args, &[]).await;
    app.create_ok(relay("main", smtp.port)).await;
    let id = send_ok(&app, send_request("main", message("a@example.com"))).await;
    let n = wait_state(&app, &id, S::Failed).await;
    assert_eq!(n.attempts, 3);
    assert!(
        n.last_error.contains("gave up after 3 attempts"),
        "{}",
        n.last_error
    );
    assert!(n.last_error.contains("451"), "{}", n.last_error);
}

#[tokio::test]
async fn one_refused_recipient_is_reported_and_the_others_get_the_mail() {
    let smtp = PyServer::smtp(&["--fail-rcpt", "gone@example.com"]);
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", smtp.port)).await;
    let mut m = message("ok@example.com");
    m.to.push(addr("gone@example.com", ""));
    let id = send_ok(&app, send_request("main", m)).await;
    let n = wait_state(&app, &id, S::Delivered).await;
    assert_eq!(n.rejected_recipients.len(), 1, "{n:?}");
    assert_eq!(n.rejected_recipients[0].address, "gone@example.com");
    assert!(n.rejected_recipients[0].reply.contains("550"), "{n:?}");
    assert_eq!(
        smtp.wait_received(1)[0]["rcpt_tos"],
        serde_json::json!(["ok@example.com"])
    );

    let id = send_ok(&app, send_request("main", message("gone@example.com"))).await;
    let n = wait_state(&app, &id, S::Failed).await;
    assert!(n.last_error.contains("550"), "{n:?}");
}

#[tokio::test]
async fn a_disconnect_during_data_is_retried_and_delivered_once() {
    let smtp = PyServer::smtp(&["--disconnect-in-data-first", "1"]);
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("main", smtp.port)).await;
    let id = send_ok(&app, send_request("main", message("a@example.com"))).await;
    let n = wait_state(&app, &id, S::Delivered).await;
    assert_eq!(n.attempts, 2, "{n:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_id_and_sends_once() {
    let smtp = PyServer::smtp(&[]);
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", smtp.port)).await;
    let mut req = send_request("main", message("a@example.com"));
    req.idempotency_key = "alert-42".into();
    let first = send_ok(&app, req.clone()).await;
    wait_state(&app, &first, S::Delivered).await;
    let again = send(&app, req.clone()).await.expect("second Send");
    assert_eq!(again.id, first);
    assert_eq!(again.state, S::Delivered as i32);
    // Concurrent duplicates too.
    req.idempotency_key = "alert-43".into();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = app.notifier.clone();
        let r = req.clone();
        tasks.push(tokio::spawn(async move {
            client.send(r).await.map(|r| r.into_inner().id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("Send"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    wait_state(&app, &ids[0], S::Delivered).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.received().len(), 2);
}

#[tokio::test]
async fn wait_for_delivery_answers_with_the_final_state() {
    let smtp = PyServer::smtp(&[]);
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", smtp.port)).await;
    let mut req = send_request("main", message("a@example.com"));
    req.wait_for_delivery = true;
    let r = send(&app, req).await.expect("Send");
    assert_eq!(r.state, S::Delivered as i32);
}

#[tokio::test]
async fn wait_for_delivery_answers_before_the_deadline_with_the_current_state() {
    // Nothing listens on the port: connection refused is transient.
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("main", 9)).await;
    let mut req = Request::new(pb::SendRequest {
        wait_for_delivery: true,
        ..send_request("main", message("a@example.com"))
    });
    req.set_timeout(Duration::from_secs(2));
    let r = app
        .notifier
        .clone()
        .send(req)
        .await
        .expect("Send within the deadline")
        .into_inner();
    assert!(
        [S::Queued as i32, S::Sending as i32, S::Retrying as i32].contains(&r.state),
        "{r:?}"
    );
}

#[tokio::test]
async fn watch_streams_every_state_change_and_ends_at_the_final_state() {
    let smtp = PyServer::smtp(&["--tempfail-first", "1"]);
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("main", smtp.port)).await;
    let id = send_ok(&app, send_request("main", message("a@example.com"))).await;
    let mut stream = app
        .notifier
        .clone()
        .watch_notification(pb::WatchNotificationRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut states = Vec::new();
    while let Some(n) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("hang guard")
        .expect("stream")
    {
        states.push(S::try_from(n.state).expect("state"));
    }
    assert_eq!(states.last(), Some(&S::Delivered), "{states:?}");
    assert!(states.contains(&S::Retrying), "{states:?}");
    // A notification already final: one message, then the end.
    let mut stream = app
        .notifier
        .clone()
        .watch_notification(pb::WatchNotificationRequest { id })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        stream.message().await.expect("first").map(|n| n.state),
        Some(S::Delivered as i32)
    );
    assert!(stream.message().await.expect("end").is_none());
}

#[tokio::test]
async fn cancel_ends_a_waiting_notification_and_refuses_a_final_one() {
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("main", 9)).await;
    let id = send_ok(&app, send_request("main", message("a@example.com"))).await;
    wait_state(&app, &id, S::Retrying).await;
    let n = app
        .notifier
        .clone()
        .cancel_notification(pb::CancelNotificationRequest { id: id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(n.state, S::Canceled as i32);
    let err = app
        .notifier
        .clone()
        .cancel_notification(pb::CancelNotificationRequest { id: id.clone() })
        .await
        .expect_err("already final");
    assert_eq!(err.code(), Code::FailedPrecondition);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(&app, &id).await.state,
        S::Canceled as i32,
        "an attempt overrode the cancel"
    );
}

#[tokio::test]
async fn list_filters_by_connection_and_state_across_pages() {
    let smtp = PyServer::smtp(&[]);
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("good", smtp.port)).await;
    app.create_ok(relay("down", 9)).await;
    let mut good = Vec::new();
    for _ in 0..5 {
        good.push(send_ok(&app, send_request("good", message("a@example.com"))).await);
    }
    let down = send_ok(&app, send_request("down", message("a@example.com"))).await;
    for id in &good {
        wait_state(&app, id, S::Delivered).await;
    }
    wait_state(&app, &down, S::Retrying).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .notifier
            .clone()
            .list_notifications(pb::ListNotificationsRequest {
                connection: "good".into(),
                state: S::Delivered as i32,
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.notifications.len() <= 2);
        seen.extend(page.notifications.into_iter().map(|n| n.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, good, "in creation order, only the good connection's");
    let retrying = app
        .notifier
        .clone()
        .list_notifications(pb::ListNotificationsRequest {
            state: S::Retrying as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        retrying
            .notifications
            .iter()
            .map(|n| n.id.clone())
            .collect::<Vec<_>>(),
        [down]
    );
}

#[tokio::test]
async fn deleting_a_connection_with_pending_mail_needs_force_which_fails_it() {
    let (app, _dir) = spawn_fast().await;
    app.create_ok(relay("down", 9)).await;
    let id = send_ok(&app, send_request("down", message("a@example.com"))).await;
    wait_state(&app, &id, S::Retrying).await;
    let err = app.delete("down", "").await.expect_err("pending mail");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    app.get_ok("down").await;
    app.admin()
        .delete_connection(pb::DeleteConnectionRequest {
            name: "down".into(),
            etag: String::new(),
            force: true,
        })
        .await
        .expect("forced delete");
    let n = wait_state(&app, &id, S::Failed).await;
    assert!(n.last_error.contains("deleted"), "{}", n.last_error);
}

#[tokio::test]
async fn mail_for_a_disabled_connection_waits_and_goes_out_when_enabled() {
    let smtp = PyServer::smtp(&[]);
    let (app, _dir) = spawn_fast().await;
    // Queue while the server is unreachable, then disable, then point it at
    // the server and enable.
    app.create_ok(relay("main", 9)).await;
    let id = send_ok(&app, send_request("main", message("a@example.com"))).await;
    wait_state(&app, &id, S::Retrying).await;
    let mut c = app.get_ok("main").await;
    c.disabled = true;
    app.update(c, &["disabled"]).await.expect("disable");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let waiting = get(&app, &id).await;
    assert_eq!(waiting.state, S::Retrying as i32, "{waiting:?}");
    let mut c = app.get_ok("main").await;
    c.disabled = false;
    if let Some(pb::connection::Backend::Smtp(s)) = &mut c.backend {
        s.port = u32::from(smtp.port);
    }
    app.update(c, &["disabled", "smtp.port"])
        .await
        .expect("enable");
    wait_state(&app, &id, S::Delivered).await;
    assert_eq!(smtp.wait_received(1).len(), 1);
}

#[tokio::test]
async fn mail_acknowledged_before_a_kill_9_is_delivered_after_the_restart() {
    let smtp = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let mut app = TestApp::spawn_with(dir.path(), &[], &[]).await;
    app.create_ok(relay("main", smtp.port)).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = app.notifier.clone();
        let req = send_request("main", message(&format!("r{i}@example.com")));
        tasks.push(tokio::spawn(async move {
            client.send(req).await.map(|r| r.into_inner().id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("Send"));
    }
    // Killed right after the last acknowledgement: some mail is still queued
    // or in flight.
    app.kill();
    drop(app);
    let app = TestApp::spawn_with(dir.path(), &fast_retries(), &[]).await;
    for id in &ids {
        wait_state(&app, id, S::Delivered).await;
    }
    let received = smtp.wait_received(50);
    let all = received
        .iter()
        .map(|r| r["data"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    for id in &ids {
        assert!(
            all.contains(id.as_str()),
            "message {id} never reached the server"
        );
    }
}

#[tokio::test]
async fn final_notifications_are_purged_after_the_retention_window() {
    let smtp = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let app = TestApp::spawn_with(dir.path(), &["--retention", "1s"], &[]).await;
    app.create_ok(relay("main", smtp.port)).await;
    let mut req = send_request("main", message("a@example.com"));
    req.idempotency_key = "purge-me".into();
    let id = send_ok(&app, req.clone()).await;
    wait_state(&app, &id, S::Delivered).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = app
            .notifier
            .clone()
            .get_notification(pb::GetNotificationRequest { id: id.clone() })
            .await
            .is_err_and(|e| e.code() == Code::NotFound);
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notification {id} was never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its idempotency key went with it: the same key is a new notification.
    let again = send_ok(&app, req).await;
    assert_ne!(again, id);
}
