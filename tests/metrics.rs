//! Prometheus metrics after real traffic: sends by connection and final
//! state, attempts, delivery latency, queue depth, gRPC calls by code.

mod common;

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use common::{TestApp, servers::PyServer};
use notigate::pb::{self, NotificationState as S};

fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics port");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_sends_attempts_latency_queue_and_calls() {
    let smtp = PyServer::smtp(&["--fail-rcpt", "gone@example.com"]);
    let dir = tempfile::tempdir().expect("dir");
    let app = TestApp::spawn_with(dir.path(), &["--metrics-listen", "127.0.0.1:0"], &[]).await;
    let log = app.stderr();
    let addr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("metrics address in the log")
        .to_owned();
    app.create_ok(pb::Connection {
        name: "main".into(),
        sender: Some(pb::Address {
            address: "a@example.com".into(),
            display_name: String::new(),
        }),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: u32::from(smtp.port),
            tls: pb::SmtpTls::None as i32,
            ..Default::default()
        })),
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for to in ["ok@example.com", "ok2@example.com", "gone@example.com"] {
        let r = app
            .notifier
            .clone()
            .send(pb::SendRequest {
                connection: "main".into(),
                message: Some(pb::EmailMessage {
                    to: vec![pb::Address {
                        address: to.into(),
                        display_name: String::new(),
                    }],
                    text_body: "x".into(),
                    ..Default::default()
                }),
                wait_for_delivery: true,
                ..Default::default()
            })
            .await
            .expect("Send")
            .into_inner();
        ids.push(r);
    }
    assert_eq!(
        ids.iter()
            .filter(|r| r.state == S::Delivered as i32)
            .count(),
        2
    );
    let _ = app
        .notifier
        .clone()
        .send(pb::SendRequest::default())
        .await
        .expect_err("invalid");

    // The final-state counters are bumped right after the state is stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&addr);
        let failed = sample(
            &text,
            "notigate_notifications_finished_total{connection=\"main\",state=\"failed\"}",
        );
        if failed == Some(1.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = |prefix: &str, value: f64| {
        assert_eq!(sample(&text, prefix), Some(value), "{prefix} in:\n{text}");
    };
    expect(
        "notigate_notifications_accepted_total{connection=\"main\"}",
        3.0,
    );
    expect(
        "notigate_notifications_finished_total{connection=\"main\",state=\"delivered\"}",
        2.0,
    );
    expect(
        "notigate_delivery_attempts_total{connection=\"main\",outcome=\"delivered\"}",
        2.0,
    );
    expect(
        "notigate_delivery_attempts_total{connection=\"main\",outcome=\"permanent\"}",
        1.0,
    );
    expect(
        "notigate_backend_errors_total{backend=\"smtp\",kind=\"permanent\"}",
        1.0,
    );
    expect(
        "notigate_delivery_latency_seconds_count{connection=\"main\"}",
        2.0,
    );
    expect("notigate_queue_depth{state=\"waiting\"}", 0.0);
    expect(
        "notigate_grpc_requests_total{method=\"notigate.v1.Notifier/Send\",code=\"OK\"}",
        3.0,
    );
    expect(
        "notigate_grpc_requests_total{method=\"notigate.v1.Notifier/Send\",code=\"INVALID_ARGUMENT\"}",
        1.0,
    );
    assert!(
        text.contains("notigate_grpc_request_duration_seconds_bucket"),
        "{text}"
    );
}
