//! Upstream faults: the real binary against test servers that misbehave on
//! command (tests/servers/smtp_server.py and ews_server.py fault flags).
//! Asserts states, attempts, backoff spacing, that a healthy connection keeps
//! flowing while another connection's server is down or stalls, and that a
//! backlog drains when the server returns.
//!
//! Scaled for CI: "the server down for a minute" is a 4 s outage with
//! retries from 100 ms (×2, capped at 800 ms, no jitter) instead of the
//! default 2 s / 5 min; "30 s stalls" are stalls against a connection
//! timeout of 1 s. The ratios (many retries during the outage, timeouts
//! firing) are what matter, not the wall-clock length.

mod common;

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{
    TestApp,
    reliability::{
        SpoolCounter, free_port, get, message, relay, report, send_request, wait_settled,
        wait_state,
    },
    servers::PyServer,
};
use notigate::pb::{self, NotificationState as S};

const WAIT: Duration = Duration::from_secs(60);

fn fast(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "--retry-initial",
        "100ms",
        "--retry-max-delay",
        "800ms",
        "--retry-jitter",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

async fn spawn(extra: &[&'static str]) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("data dir");
    let app = TestApp::spawn_with(dir.path(), &fast(extra), &[]).await;
    (app, dir)
}

async fn send(app: &TestApp, connection: &str, subject: &str) -> String {
    app.notifier
        .clone()
        .send(send_request(
            connection,
            message("someone@example.com", subject),
        ))
        .await
        .unwrap_or_else(|s| panic!("Send {subject}: {s:?}"))
        .into_inner()
        .id
}

fn millis(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Every state change of a notification until it is final.
async fn watch(app: &TestApp, id: &str) -> Vec<pb::Notification> {
    let mut stream = app
        .notifier
        .clone()
        .watch_notification(pb::WatchNotificationRequest { id: id.into() })
        .await
        .expect("WatchNotification")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(n) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("hang guard")
        .expect("stream")
    {
        seen.push(n);
    }
    seen
}

fn total_attempts(ns: &[pb::Notification]) -> u32 {
    ns.iter().map(|n| n.attempts).sum()
}

// ---------------------------------------------------------------------------
// SMTP

#[tokio::test]
async fn a_4xx_on_every_nth_message_is_retried_and_everything_arrives_once() {
    let sink = PyServer::smtp(&["--tempfail-every", "4"]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(relay("main", sink.port, Duration::from_secs(10)))
        .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(send(&app, "main", &format!("m{i}")).await);
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(wait_state(&app, id, S::Delivered, WAIT).await);
    }
    // The sink saw every attempt as one DATA; each 4th got 451.
    let attempts = total_attempts(&done);
    assert_eq!(attempts - 40, attempts / 4, "attempts {attempts}");
    for n in done.iter().filter(|n| n.attempts > 1) {
        assert!(n.last_error.contains("451"), "{n:?}");
    }
    let mut spool = SpoolCounter::new(sink.spool_dir());
    spool.refresh();
    assert_eq!(spool.total, 40);
    assert_eq!(spool.counts().len(), 40, "each message exactly once");
    report(&format!(
        "RELIABILITY 4xx-every-4th: messages=40 attempts={attempts} delivered_once=40"
    ));
}

#[tokio::test]
async fn a_disconnect_mid_data_is_retried_and_delivered_once() {
    let sink = PyServer::smtp(&["--disconnect-in-data-first", "3"]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(relay("main", sink.port, Duration::from_secs(10)))
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send(&app, "main", &format!("m{i}")).await);
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(wait_state(&app, id, S::Delivered, WAIT).await);
    }
    assert_eq!(total_attempts(&done), 8, "{done:?}");
    let mut spool = SpoolCounter::new(sink.spool_dir());
    spool.refresh();
    assert_eq!((spool.total, spool.counts().len()), (5, 5));
}

#[tokio::test]
async fn a_stalled_server_times_out_while_a_healthy_connection_keeps_flowing() {
    let stalling = PyServer::smtp(&["--stall-first", "8"]);
    let healthy = PyServer::smtp(&[]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(relay("stalling", stalling.port, Duration::from_secs(1)))
        .await;
    app.create_ok(relay("healthy", healthy.port, Duration::from_secs(10)))
        .await;
    let started = Instant::now();
    // Eight attempts hang at once: every slot of the stalling connection.
    let mut stalled = Vec::new();
    for i in 0..8 {
        stalled.push(send(&app, "stalling", &format!("s{i}")).await);
    }
    let mut flowing = HashSet::new();
    for i in 0..20 {
        flowing.insert(send(&app, "healthy", &format!("h{i}")).await);
    }
    let mut spool = SpoolCounter::new(healthy.spool_dir());
    let missing = spool.wait_all(&flowing, Duration::from_secs(30));
    let healthy_done = started.elapsed();
    assert!(missing.is_empty());
    // The healthy mail went out while the stalled attempts still waited
    // for their timeout.
    assert!(
        healthy_done < Duration::from_secs(1),
        "the healthy connection waited for the stalled one: {healthy_done:?}"
    );
    for id in &stalled {
        let n = wait_state(&app, id, S::Delivered, WAIT).await;
        assert_eq!(n.attempts, 2, "{n:?}");
        assert!(n.last_error.contains("timed out"), "{n:?}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "a stall ended before the 1 s timeout: {elapsed:?}"
    );
    let mut spool = SpoolCounter::new(stalling.spool_dir());
    spool.refresh();
    assert_eq!((spool.total, spool.counts().len()), (8, 8));
    report(&format!(
        "RELIABILITY stall: stalled=8 timeout=1s healthy_delivered=20 in {healthy_done:?}, stalled delivered after {elapsed:?}"
    ));
}

#[tokio::test]
async fn a_server_down_then_back_drains_its_backlog_with_exponential_spacing() {
    let port = free_port();
    let healthy = PyServer::smtp(&[]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(relay("down", port, Duration::from_secs(2)))
        .await;
    app.create_ok(relay("healthy", healthy.port, Duration::from_secs(10)))
        .await;

    let mut backlog = HashSet::new();
    for i in 0..20 {
        backlog.insert(send(&app, "down", &format!("d{i}")).await);
    }
    let watched = backlog.iter().next().unwrap().clone();
    let watcher = {
        let app_channel = app.channel.clone();
        let id = watched.clone();
        tokio::spawn(async move {
            let mut client = pb::notifier_client::NotifierClient::new(app_channel);
            let mut stream = client
                .watch_notification(pb::WatchNotificationRequest { id })
                .await
                .expect("watch")
                .into_inner();
            let mut seen = Vec::new();
            while let Ok(Some(n)) = stream.message().await {
                seen.push(n);
            }
            seen
        })
    };
    // During the outage (scaled: 4 s) the healthy connection delivers.
    let outage = Instant::now();
    let mut flowing = HashSet::new();
    let mut spool = SpoolCounter::new(healthy.spool_dir());
    while outage.elapsed() < Duration::from_secs(4) {
        flowing.insert(send(&app, "healthy", "during the outage").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = spool.wait_all(&flowing, Duration::from_secs(5));
    assert!(missing.is_empty(), "healthy mail held up by the outage");
    let during = get(&app, &watched).await;
    assert_eq!(during.state, S::Retrying as i32, "{during:?}");
    assert!(during.attempts >= 5, "{during:?}");
    assert!(during.last_error.contains("refused"), "{during:?}");

    // The server comes back on its port: the backlog drains.
    let back = PyServer::smtp(&["--port", &port.to_string()]);
    let returned = Instant::now();
    let mut spool = SpoolCounter::new(back.spool_dir());
    let missing = spool.wait_all(&backlog, Duration::from_secs(30));
    let drained_in = returned.elapsed();
    assert!(missing.is_empty(), "not drained: {missing:?}");
    wait_settled(&app, Duration::from_secs(10)).await;
    spool.refresh();
    assert_eq!(spool.total, 20, "each message once");
    assert!(
        drained_in < Duration::from_secs(5),
        "the backlog waited more than the capped delay: {drained_in:?}"
    );

    // Spacing: each RETRYING names its next attempt 100 ms × 2^(n-1),
    // capped at 800 ms; the next SENDING comes no earlier than that.
    let seen = watcher.await.expect("watcher");
    let mut checked = 0;
    for pair in seen.windows(2) {
        let (r, s) = (&pair[0], &pair[1]);
        if r.state != S::Retrying as i32 || s.state != S::Sending as i32 {
            continue;
        }
        let expected = (100i64 << (r.attempts - 1).min(3)).min(800);
        let planned = millis(&r.next_attempt_time) - millis(&r.update_time);
        assert!(
            (planned - expected).abs() <= 2,
            "after attempt {} the delay is {planned} ms, expected {expected} ms",
            r.attempts
        );
        let waited = millis(&s.update_time) - millis(&r.update_time);
        assert!(
            waited >= expected - 5 && waited < expected + 1000,
            "attempt {} came {waited} ms after the failure; planned {expected} ms",
            s.attempts
        );
        checked += 1;
    }
    assert!(checked >= 4, "too few retries observed: {seen:?}");
    report(&format!(
        "RELIABILITY outage: backlog=20 outage=4s attempts_during_outage={} healthy_delivered_during_outage={} drained_in={drained_in:?} duplicates=0",
        during.attempts,
        flowing.len()
    ));
}

#[tokio::test]
async fn a_421_greeting_is_retried_then_fails_at_the_attempt_limit() {
    let sink = PyServer::smtp(&["--greeting-421"]);
    let (app, _dir) = spawn(&["--retry-max-attempts", "3"]).await;
    app.create_ok(relay("main", sink.port, Duration::from_secs(5)))
        .await;
    let id = send(&app, "main", "greeting").await;
    let states: Vec<i32> = watch(&app, &id).await.iter().map(|n| n.state).collect();
    assert!(states.contains(&(S::Retrying as i32)), "{states:?}");
    let n = get(&app, &id).await;
    assert_eq!(n.state, S::Failed as i32, "{n:?}");
    assert_eq!(n.attempts, 3);
    assert!(n.last_error.contains("421"), "{n:?}");
    assert!(n.last_error.contains("gave up after 3 attempts"), "{n:?}");
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files.
fn untrusted_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, KeyPair};
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn a_tls_handshake_failure_is_retried_and_an_untrusted_certificate_fails() {
    // Implicit TLS to a server that speaks plain SMTP: the handshake breaks.
    let plain = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = untrusted_certificate(dir.path());
    let tls = PyServer::smtp(&[
        "--tls",
        "implicit",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let (app, _dir) = spawn(&["--retry-max-attempts", "2"]).await;
    for (name, port) in [("broken", plain.port), ("untrusted", tls.port)] {
        let mut c = relay(name, port, Duration::from_secs(5));
        common::smtp_mut(&mut c).tls = pb::SmtpTls::Implicit as i32;
        app.create_ok(c).await;
    }
    let broken = send(&app, "broken", "handshake").await;
    let untrusted = send(&app, "untrusted", "certificate").await;

    let n = wait_state(&app, &broken, S::Failed, WAIT).await;
    assert_eq!(n.attempts, 2, "a handshake failure is transient: {n:?}");
    assert!(n.last_error.contains("TLS"), "{n:?}");
    let n = wait_state(&app, &untrusted, S::Failed, WAIT).await;
    assert_eq!(
        n.attempts, 1,
        "an untrusted certificate is permanent: {n:?}"
    );
    assert!(n.last_error.contains("certificate"), "{n:?}");
    assert!(plain.received().is_empty() && tls.received().is_empty());
}

#[tokio::test]
async fn a_5xx_for_one_recipient_delivers_to_the_others_in_one_attempt() {
    let sink = PyServer::smtp(&["--fail-rcpt", "gone@example.com"]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(relay("main", sink.port, Duration::from_secs(5)))
        .await;
    let mut m = message("a@example.com", "partial");
    for to in ["gone@example.com", "b@example.com"] {
        m.to.push(pb::Address {
            address: to.into(),
            display_name: String::new(),
        });
    }
    let id = app
        .notifier
        .clone()
        .send(send_request("main", m))
        .await
        .expect("Send")
        .into_inner()
        .id;
    let n = wait_state(&app, &id, S::Delivered, WAIT).await;
    assert_eq!(n.attempts, 1);
    assert_eq!(n.rejected_recipients.len(), 1, "{n:?}");
    assert_eq!(n.rejected_recipients[0].address, "gone@example.com");
    assert!(n.rejected_recipients[0].reply.starts_with("550"), "{n:?}");
    let got = sink.wait_received(1);
    assert_eq!(
        got[0]["rcpt_tos"],
        serde_json::json!(["a@example.com", "b@example.com"])
    );
}

// ---------------------------------------------------------------------------
// Exchange (EWS)

struct Ews {
    server: PyServer,
    _users: tempfile::TempDir,
}

fn ews(args: &[&str]) -> Ews {
    let users = tempfile::tempdir().unwrap();
    let path = users.path().join("users.txt");
    std::fs::write(&path, "CORP:alice:Secret123\n").unwrap();
    let mut all = vec![
        "--auth",
        "basic",
        "--quiet",
        "--users",
        path.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    Ews {
        server: PyServer::start("ews_server.py", &all),
        _users: users,
    }
}

impl Ews {
    /// The CreateItem requests the fake answered, with its response code.
    fn create_items(&self) -> Vec<(String, String)> {
        self.server
            .received()
            .iter()
            // A request answered with a bare HTTP 500 is recorded before
            // it is parsed.
            .filter(|r| r["operation"] == "CreateItem" || r["response_code"] == "HTTP500")
            .map(|r| {
                (
                    r["subject"].as_str().unwrap_or_default().to_owned(),
                    r["response_code"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn exchange(name: &str, port: u16, timeout: Duration) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        log_level: pb::LogLevel::Errors as i32,
        sender: Some(pb::Address {
            address: "alice@corp.example.com".into(),
            display_name: "Alice".into(),
        }),
        backend: Some(pb::connection::Backend::Exchange(pb::ExchangeSettings {
            server: format!("127.0.0.1:{port}"),
            version: pb::ExchangeVersion::ExchangeVersion2016 as i32,
            auth: pb::ExchangeAuth::Basic as i32,
            username: "alice".into(),
            password: "Secret123".into(),
            domain: "CORP".into(),
            allow_plain_http: true,
            timeout: Some(prost_types::Duration {
                seconds: timeout.as_secs() as i64,
                nanos: timeout.subsec_nanos() as i32,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_ews_server_busy_storm_is_ridden_out_honouring_back_off() {
    let fake = ews(&["--busy-first", "6", "--backoff-ms", "700"]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(exchange("ews", fake.server.port, Duration::from_secs(10)))
        .await;
    let first = send(&app, "ews", "busy 0").await;
    let seen = watch(&app, &first).await;
    let mut ids = vec![first];
    for i in 1..3 {
        ids.push(send(&app, "ews", &format!("busy {i}")).await);
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(wait_state(&app, id, S::Delivered, WAIT).await);
    }
    assert_eq!(total_attempts(&done), 3 + 6, "{done:?}");
    // Every retry after ErrorServerBusy waited the server's 700 ms, not
    // the policy's 100 ms.
    let mut retries = 0;
    for pair in seen.windows(2) {
        let (r, s) = (&pair[0], &pair[1]);
        if r.state == S::Retrying as i32 && s.state == S::Sending as i32 {
            assert!(r.last_error.contains("ErrorServerBusy"), "{r:?}");
            let planned = millis(&r.next_attempt_time) - millis(&r.update_time);
            let waited = millis(&s.update_time) - millis(&r.update_time);
            assert!(
                planned >= 700 && waited >= 695,
                "planned {planned}, waited {waited}"
            );
            retries += 1;
        }
    }
    assert!(retries >= 1, "{seen:?}");
    let codes = fake.create_items();
    let sent: Vec<_> = codes.iter().filter(|(_, c)| c == "NoError").collect();
    assert_eq!(sent.len(), 3, "{codes:?}");
    report("RELIABILITY ews-busy: messages=3 busy_faults=6 back_off_ms=700 delivered_once=3");
}

#[tokio::test]
async fn ews_http_500s_are_retried_until_delivered() {
    let fake = ews(&["--http500-first", "2"]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(exchange("ews", fake.server.port, Duration::from_secs(10)))
        .await;
    let id = send(&app, "ews", "five hundred").await;
    let n = wait_state(&app, &id, S::Delivered, WAIT).await;
    assert_eq!(n.attempts, 3, "{n:?}");
    assert!(n.last_error.contains("500"), "{n:?}");
    let codes: Vec<String> = fake.create_items().into_iter().map(|(_, c)| c).collect();
    assert_eq!(codes, ["HTTP500", "HTTP500", "NoError"]);
}

#[tokio::test]
async fn slow_ews_responses_time_out_and_a_longer_timeout_delivers() {
    let fake = ews(&["--delay-ms", "1500"]);
    let (app, _dir) = spawn(&[]).await;
    app.create_ok(exchange("ews", fake.server.port, Duration::from_secs(1)))
        .await;
    let id = send(&app, "ews", "slow").await;
    let deadline = Instant::now() + WAIT;
    let n = loop {
        let n = get(&app, &id).await;
        if n.attempts >= 2 && n.state == S::Retrying as i32 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n.state, S::Retrying as i32, "{n:?}");
    assert!(n.last_error.contains("timed out"), "{n:?}");
    // A longer timeout for the connection: the next attempt gets through.
    let mut c = app.get_ok("ews").await;
    if let Some(pb::connection::Backend::Exchange(e)) = &mut c.backend {
        e.timeout = Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        });
    }
    app.update(c, &["exchange.timeout"])
        .await
        .expect("longer timeout");
    let n = wait_state(&app, &id, S::Delivered, WAIT).await;
    assert!(n.attempts >= 3, "{n:?}");
}
