//! Bad input through gRPC, at volume: oversized messages, thousands of
//! recipients, empty everything, invalid enums, garbage page tokens, stale
//! etags, concurrent updates of one connection, 1,000 parallel Creates of
//! one name. Nothing panics, every INVALID_ARGUMENT names its field, and a
//! rejected request leaves the store as it was.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{
    TestApp, assert_code, assert_invalid,
    reliability::{all_notifications, message, relay, send_request, wait_state},
    servers::PyServer,
    smtp_connection,
};
use notigate::pb::{self, NotificationState as S};
use tonic::Code;

/// What a client can see of the store: every connection and notification.
async fn store_view(app: &TestApp) -> (Vec<pb::Connection>, Vec<pb::Notification>) {
    (app.list_all().await, all_notifications(app, None).await)
}

fn assert_no_panic(app: &TestApp) {
    let log = app.stderr();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

async fn send(app: &TestApp, req: pb::SendRequest) -> Result<pb::SendResponse, tonic::Status> {
    app.notifier.clone().send(req).await.map(|r| r.into_inner())
}

fn to_many(n: usize, domain: &str) -> Vec<pb::Address> {
    (0..n)
        .map(|i| pb::Address {
            address: format!("r{i}@{domain}"),
            display_name: format!("Получатель {i}"),
        })
        .collect()
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(dir.path(), &["--max-message-size", "1MiB"], &[]).await;
    app.create_ok(relay("main", 9, Duration::from_secs(5)))
        .await;
    let before = store_view(&app).await;
    let limit = 1024 * 1024;
    let mut body = message("a@example.com", "big");
    body.text_body = "x".repeat(limit + 1);
    let mut attachments = message("a@example.com", "big");
    attachments.attachments = (0..3)
        .map(|i| pb::Attachment {
            filename: format!("part{i}.bin"),
            content_type: "application/octet-stream".into(),
            content: vec![7; limit / 3 + 1],
            content_id: String::new(),
        })
        .collect();
    let mut everything = message("a@example.com", &"я".repeat(limit / 4));
    everything.html_body = "<p>".repeat(limit / 6);
    everything.text_body = "t".repeat(limit / 4);
    for m in [body, attachments, everything] {
        let s = assert_code(
            send(&app, send_request("main", m)).await,
            Code::ResourceExhausted,
        );
        assert!(s.message().contains("limit"), "{s:?}");
    }
    assert_eq!(store_view(&app).await, before);
    assert_no_panic(&app);
}

#[tokio::test]
async fn thousands_of_recipients_are_refused_by_count_or_delivered() {
    let sink = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(dir.path(), &["--max-recipients", "2000"], &[]).await;
    app.create_ok(relay("main", sink.port, Duration::from_secs(30)))
        .await;
    let before = store_view(&app).await;

    // Over the limit: one violation for the count.
    let mut m = message("a@example.com", "many");
    m.to = to_many(3000, "example.com");
    m.bcc = to_many(2000, "example.org");
    let s = assert_invalid(send(&app, send_request("main", m)).await, &["message.to"]);
    assert!(s.message().contains("5000 recipients"), "{s:?}");

    // Thousands of malformed addresses: every one is named, and the answer
    // still fits in a gRPC status.
    let mut m = message("a@example.com", "malformed");
    m.to = (0..1500)
        .map(|i| pb::Address {
            address: format!("not an address {i}"),
            display_name: String::new(),
        })
        .collect();
    let s = send(&app, send_request("main", m))
        .await
        .expect_err("malformed recipients");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let fields = common::bad_request_fields(&s);
    assert!(
        fields.iter().all(|f| f.starts_with("message.to")),
        "{:?}",
        &fields[..fields.len().min(5)]
    );
    assert!(!fields.is_empty());
    assert!(s.message().contains("more violations"), "{}", s.message());
    // The channel survived the answer: the next call works.
    assert_eq!(store_view(&app).await, before, "a refusal stored something");

    // Within the limit: 1,500 recipients in one message, delivered once.
    let mut m = message("a@example.com", "many ok");
    m.to = to_many(1000, "example.com");
    m.cc = to_many(300, "example.net");
    m.bcc = to_many(200, "example.org");
    let id = send(&app, send_request("main", m)).await.expect("Send").id;
    let n = wait_state(&app, &id, S::Delivered, Duration::from_secs(60)).await;
    assert_eq!(n.attempts, 1);
    let got = sink.wait_received(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["rcpt_tos"].as_array().map(Vec::len), Some(1500));
    assert_no_panic(&app);
}

#[tokio::test]
async fn empty_requests_name_the_missing_fields() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9, Duration::from_secs(5)))
        .await;
    let before = store_view(&app).await;
    let mut notifier = app.notifier.clone();

    assert_invalid(send(&app, pb::SendRequest::default()).await, &["message"]);
    assert_invalid(
        send(
            &app,
            pb::SendRequest {
                connection: "main".into(),
                message: Some(pb::EmailMessage::default()),
                ..Default::default()
            },
        )
        .await,
        &["message.to", "message.text_body"],
    );
    // Empty addresses, names and bodies inside an otherwise full message.
    let m = pb::EmailMessage {
        to: vec![pb::Address::default()],
        cc: vec![pb::Address::default()],
        reply_to: vec![pb::Address::default()],
        attachments: vec![pb::Attachment::default()],
        headers: [(String::new(), String::new())].into(),
        ..Default::default()
    };
    assert_invalid(
        send(&app, send_request("main", m)).await,
        &[
            "message.to[0].address",
            "message.cc[0].address",
            "message.reply_to[0].address",
            "message.text_body",
            "message.attachments[0].filename",
            "message.headers[]",
        ],
    );
    assert_invalid(
        notifier
            .get_notification(pb::GetNotificationRequest::default())
            .await,
        &["id"],
    );
    assert_invalid(
        notifier
            .cancel_notification(pb::CancelNotificationRequest::default())
            .await,
        &["id"],
    );
    assert_invalid(
        notifier
            .watch_notification(pb::WatchNotificationRequest::default())
            .await,
        &["id"],
    );
    assert_invalid(
        app.admin()
            .create_connection(pb::CreateConnectionRequest {
                connection: Some(pb::Connection::default()),
            })
            .await,
        &[
            "connection.name",
            "connection.sender.address",
            "connection.backend",
        ],
    );
    assert_invalid(app.get("").await, &["name"]);
    assert_invalid(app.delete("", "").await, &["name"]);
    assert_eq!(store_view(&app).await, before);
    assert_no_panic(&app);
}

#[tokio::test]
async fn unknown_enum_values_name_their_field() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9, Duration::from_secs(5)))
        .await;
    let before = store_view(&app).await;
    for value in [42, -1, i32::MAX, i32::MIN] {
        let mut m = message("a@example.com", "enum");
        m.priority = value;
        assert_invalid(
            send(&app, send_request("main", m)).await,
            &["message.priority"],
        );
        assert_invalid(
            app.notifier
                .clone()
                .list_notifications(pb::ListNotificationsRequest {
                    state: value,
                    ..Default::default()
                })
                .await,
            &["state"],
        );
        let mut c = smtp_connection("Enums");
        c.log_level = value;
        common::smtp_mut(&mut c).tls = value;
        common::smtp_mut(&mut c).auth = value;
        let s = assert_code(app.create(c).await, Code::InvalidArgument);
        let mut fields = common::bad_request_fields(&s);
        fields.sort();
        assert_eq!(
            fields,
            [
                "connection.log_level",
                "connection.smtp.auth",
                "connection.smtp.tls"
            ],
            "{s:?}"
        );
    }
    assert_eq!(store_view(&app).await, before);
    assert_no_panic(&app);
}

#[tokio::test]
async fn garbage_page_tokens_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9, Duration::from_secs(5)))
        .await;
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let tokens = [
        "!".to_string(),
        "a".into(),
        "====".into(),
        b64(b"k:"),
        b64(b"k:not-an-id"),
        b64(b"x:0190f0e2-7c1a-7000-8000-000000000001"),
        b64(&[0xff, 0xfe, 0x00, 0x80]),
        "A".repeat(64 * 1024),
        "\u{1F4A9}".into(),
    ];
    for token in &tokens {
        assert_invalid(
            app.notifier
                .clone()
                .list_notifications(pb::ListNotificationsRequest {
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await,
            &["page_token"],
        );
        // A connection page token is the base64 of "k:" and a name: any
        // such name is a position, so only those that do not decode are
        // refused there.
        if !base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|b| b.starts_with(b"k:"))
        {
            assert_invalid(app.list(10, token).await, &["page_token"]);
        }
    }
    assert_no_panic(&app);
}

#[tokio::test]
async fn stale_etags_are_aborted_and_change_nothing() {
    let app = TestApp::spawn().await;
    let first = app.create_ok(smtp_connection("Tagged")).await;
    let mut c = first.clone();
    c.description = "second".into();
    let second = app.update(c, &["description"]).await.expect("update");
    let before = store_view(&app).await;

    let mut stale = first.clone();
    stale.description = "from a stale read".into();
    assert_code(app.update(stale, &["description"]).await, Code::Aborted);
    assert_code(app.delete("Tagged", &first.etag).await, Code::Aborted);
    let mut made_up = second.clone();
    made_up.etag = "0000000000000000".into();
    assert_code(app.update(made_up, &["description"]).await, Code::Aborted);
    assert_eq!(store_view(&app).await, before);
    assert_eq!(app.get_ok("Tagged").await.etag, second.etag);
    assert_no_panic(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_of_one_connection_serialise() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Busy")).await;

    // Without etags: all succeed, and the stored result is exactly one of
    // them, with that update's etag.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut admin = app.admin();
        let mut c = created.clone();
        c.etag = String::new();
        c.description = format!("writer {i}");
        common::smtp_mut(&mut c).port = 1000 + i;
        tasks.spawn(async move {
            admin
                .update_connection(pb::UpdateConnectionRequest {
                    connection: Some(c),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["description".into(), "smtp.port".into()],
                    }),
                })
                .await
                .map(|r| r.into_inner())
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.expect("task").expect("update without etag"));
    }
    let stored = app.get_ok("Busy").await;
    let winner = results
        .iter()
        .find(|r| r.etag == stored.etag)
        .expect("the stored etag is one an update returned");
    assert_eq!(winner.description, stored.description);
    assert_eq!(
        common::smtp(winner).port,
        common::smtp(&stored).port,
        "description and port come from the same update"
    );
    assert_eq!(
        stored.description,
        format!("writer {}", common::smtp(&stored).port - 1000)
    );
    let etags: std::collections::HashSet<_> = results.iter().map(|r| &r.etag).collect();
    assert_eq!(etags.len(), results.len(), "every update has its own etag");

    // With the same etag: exactly one wins.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut admin = app.admin();
        let mut c = stored.clone();
        c.description = format!("guarded {i}");
        tasks.spawn(async move {
            admin
                .update_connection(pb::UpdateConnectionRequest {
                    connection: Some(c),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["description".into()],
                    }),
                })
                .await
                .map(|r| r.into_inner())
        });
    }
    let (mut ok, mut aborted) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::Aborted => aborted += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!((ok, aborted), (1, 199));
    assert_no_panic(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_parallel_creates_of_one_name_make_exactly_one() {
    let app = TestApp::spawn().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let mut admin = app.admin();
        let mut c = smtp_connection("Contended");
        c.description = format!("writer {i}");
        tasks.spawn(async move {
            admin
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(c),
                })
                .await
                .map(|r| r.into_inner())
        });
    }
    let (mut won, mut exists) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(c) => won.push(c),
            Err(s) if s.code() == Code::AlreadyExists => exists += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!((won.len(), exists), (1, 999));
    let all = app.list_all().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].description, won[0].description);
    assert_eq!(all[0].etag, won[0].etag);
    assert_no_panic(&app);
}

#[tokio::test]
async fn header_injection_attempts_are_refused_naming_the_header() {
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", 9, Duration::from_secs(5)))
        .await;
    let before = store_view(&app).await;
    let cases: Vec<(pb::EmailMessage, &str)> = vec![
        (
            pb::EmailMessage {
                subject: "hi\r\nBcc: victim@example.com".into(),
                ..message("a@example.com", "")
            },
            "message.subject",
        ),
        (
            pb::EmailMessage {
                headers: [("X-Ok".to_string(), "v\nBcc: victim@example.com".to_string())].into(),
                ..message("a@example.com", "h")
            },
            "message.headers[X-Ok]",
        ),
        (
            pb::EmailMessage {
                headers: [("Bcc".to_string(), "victim@example.com".to_string())].into(),
                ..message("a@example.com", "h")
            },
            "message.headers[Bcc]",
        ),
        (
            pb::EmailMessage {
                to: vec![pb::Address {
                    address: "a@example.com".into(),
                    display_name: "A\u{2028}Bcc: victim@example.com".into(),
                }],
                ..message("a@example.com", "h")
            },
            "message.to[0].display_name",
        ),
        (
            pb::EmailMessage {
                to: vec![pb::Address {
                    address: "a@example.com>\r\nRCPT TO:<victim@example.com".into(),
                    display_name: String::new(),
                }],
                ..message("a@example.com", "h")
            },
            "message.to[0].address",
        ),
    ];
    for (m, field) in cases {
        assert_invalid(send(&app, send_request("main", m)).await, &[field]);
    }
    assert_eq!(store_view(&app).await, before);
    assert_no_panic(&app);
}

#[tokio::test]
async fn bodies_holding_smtp_terminators_arrive_intact() {
    // A line with a lone "." ends DATA unless the client dot-stuffs it.
    let sink = PyServer::smtp(&[]);
    let app = TestApp::spawn().await;
    app.create_ok(relay("main", sink.port, Duration::from_secs(10)))
        .await;
    let body = "first\n.\nthird\r\n.\r\n..fifth\r\n.";
    let mut m = message("a@example.com", "dots");
    m.text_body = body.into();
    let id = send(&app, send_request("main", m)).await.expect("Send").id;
    wait_state(&app, &id, S::Delivered, Duration::from_secs(30)).await;
    let got = sink.wait_received(1);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(got[0]["data_b64"].as_str().unwrap())
        .unwrap();
    let parsed = common::servers::parse_mime(&raw);
    let text = parsed["tree"]["text"].as_str().unwrap_or_default();
    assert_eq!(
        text.replace("\r\n", "\n").trim_end_matches('\n'),
        body.replace("\r\n", "\n"),
        "{parsed}"
    );
    assert_no_panic(&app);
}
