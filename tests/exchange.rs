//! Exchange end to end through the gRPC API: the seed's "Send e-mail via
//! Exchange" form as a connection, "Test connection", Send, and the outcomes
//! the fake EWS server (tests/servers/ews_server.py) produces like Exchange.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, servers::PyServer};
use notigate::pb::{self, NotificationState as S, test_connection_request::Target};

const PASSWORD: &str = "Exch-Passw0rd";

fn users_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("users file");
    std::fs::write(f.path(), format!("CORP:alice:{PASSWORD}\n")).expect("write users");
    f
}

/// The seed form: system name, description, file-log level, server without
/// the protocol, version, Windows authentication, user, password, domain,
/// sender name and address.
fn seed_form(name: &str, port: u16) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        description: "Отправка почты через Exchange".into(),
        log_level: pb::LogLevel::Full as i32,
        sender: Some(pb::Address {
            address: "alice@corp.example".into(),
            display_name: "Алиса Иванова".into(),
        }),
        backend: Some(pb::connection::Backend::Exchange(pb::ExchangeSettings {
            server: format!("127.0.0.1:{port}"),
            version: pb::ExchangeVersion::ExchangeVersion2016 as i32,
            auth: pb::ExchangeAuth::Ntlm as i32,
            username: "alice".into(),
            password: PASSWORD.into(),
            domain: "CORP".into(),
            allow_plain_http: true,
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn ews(users: &tempfile::NamedTempFile, extra: &[&str]) -> PyServer {
    let mut args = vec![
        "--auth",
        "ntlm",
        "--users",
        users.path().to_str().unwrap(),
        "--account-address",
        "alice@corp.example",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    PyServer::start("ews_server.py", &args)
}

fn message(subject: &str) -> pb::EmailMessage {
    pb::EmailMessage {
        to: vec![pb::Address {
            address: "bob@corp.example".into(),
            display_name: "Борис".into(),
        }],
        subject: subject.into(),
        html_body: "<p>Отчёт готов</p>".into(),
        ..Default::default()
    }
}

async fn send(app: &TestApp, connection: &str, m: pb::EmailMessage) -> String {
    app.notifier
        .clone()
        .send(pb::SendRequest {
            connection: connection.into(),
            message: Some(m),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner()
        .id
}

async fn wait_final(app: &TestApp, id: &str) -> pb::Notification {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = app
            .notifier
            .clone()
            .get_notification(pb::GetNotificationRequest { id: id.into() })
            .await
            .expect("Get")
            .into_inner();
        let done = [S::Delivered as i32, S::Failed as i32, S::Canceled as i32].contains(&n.state);
        if done || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SOAP records of the fake, CreateItem only.
fn create_items(server: &PyServer) -> Vec<serde_json::Value> {
    server
        .received()
        .into_iter()
        .filter(|r| r["operation"] == "CreateItem")
        .collect()
}

#[tokio::test]
async fn the_seed_form_tests_sends_and_delivers_with_windows_authentication() {
    let users = users_file();
    let server = ews(&users, &[]);
    let app = TestApp::spawn().await;
    app.create_ok(seed_form("exchange_main", server.port)).await;

    let report = app
        .test_connection(Target::Name("exchange_main".into()))
        .await
        .expect("TestConnection");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.stage, "ews");

    let id = send(&app, "exchange_main", message("Квартальный отчёт")).await;
    let n = wait_final(&app, &id).await;
    assert_eq!(n.state, S::Delivered as i32, "{n:?}");

    let sent = create_items(&server);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let r = &sent[0];
    assert_eq!(r["auth_scheme"], "ntlm");
    assert!(
        r["auth_user"]
            .as_str()
            .unwrap_or_default()
            .eq_ignore_ascii_case("CORP\\alice"),
        "{r}"
    );
    assert_eq!(r["server_version"], "Exchange2016");
    assert_eq!(r["message_disposition"], "SendOnly");
    assert_eq!(r["subject"], "Квартальный отчёт");
    assert_eq!(r["body_type"], "HTML");
    assert_eq!(r["from"]["name"], "Алиса Иванова");
    assert_eq!(r["from"]["address"], "alice@corp.example");
    assert_eq!(r["to"][0]["name"], "Борис");
    assert_eq!(r["response_code"], "NoError");
}

#[tokio::test]
async fn a_wrong_password_fails_without_retrying() {
    let users = users_file();
    let server = ews(&users, &[]);
    let app = TestApp::spawn().await;
    let mut c = seed_form("exchange_main", server.port);
    if let Some(pb::connection::Backend::Exchange(e)) = &mut c.backend {
        e.password = "wrong-password".into();
    }
    app.create_ok(c).await;
    let report = app
        .test_connection(Target::Name("exchange_main".into()))
        .await
        .expect("TestConnection");
    assert!(!report.ok);
    assert_eq!(report.stage, "auth", "{report:?}");
    let n = wait_final(&app, &send(&app, "exchange_main", message("x")).await).await;
    assert_eq!(n.state, S::Failed as i32, "{n:?}");
    assert_eq!(n.attempts, 1);
    assert!(!n.last_error.contains("wrong-password"), "{}", n.last_error);
}

#[tokio::test]
async fn a_sender_the_account_may_not_send_as_fails_saying_so() {
    let users = users_file();
    let server = ews(&users, &[]);
    let app = TestApp::spawn().await;
    let mut c = seed_form("exchange_main", server.port);
    c.sender = Some(pb::Address {
        address: "ceo@corp.example".into(),
        display_name: "CEO".into(),
    });
    app.create_ok(c).await;
    let n = wait_final(&app, &send(&app, "exchange_main", message("x")).await).await;
    assert_eq!(n.state, S::Failed as i32, "{n:?}");
    assert!(
        n.last_error.contains("ErrorSendAsDenied"),
        "{}",
        n.last_error
    );
    assert!(
        n.last_error.contains("ceo@corp.example"),
        "{}",
        n.last_error
    );
    assert!(
        n.last_error.contains("does not allow sending as"),
        "{}",
        n.last_error
    );
}

#[tokio::test]
async fn throttling_is_retried_no_sooner_than_the_server_asks() {
    let users = users_file();
    let server = ews(&users, &["--busy-first", "1", "--backoff-ms", "1500"]);
    let dir = tempfile::tempdir().expect("dir");
    let app = TestApp::spawn_with(
        dir.path(),
        &["--retry-initial", "100ms", "--retry-max-delay", "200ms"],
        &[],
    )
    .await;
    app.create_ok(seed_form("exchange_main", server.port)).await;
    let id = send(&app, "exchange_main", message("x")).await;
    let n = wait_final(&app, &id).await;
    assert_eq!(n.state, S::Delivered as i32, "{n:?}");
    assert_eq!(n.attempts, 2);
    assert!(n.last_error.contains("ErrorServerBusy"), "{}", n.last_error);
    let records = server.received();
    let t = |r: &serde_json::Value| seconds_of_day(r["time"].as_str().unwrap_or_default());
    let busy = records
        .iter()
        .find(|r| r["response_code"] == "ErrorServerBusy")
        .expect("busy");
    let ok = records
        .iter()
        .find(|r| r["response_code"] == "NoError")
        .expect("delivered");
    let gap = (t(ok) - t(busy)).rem_euclid(86_400.0);
    assert!(
        gap >= 1.45,
        "retried after {gap:.3} s, before the 1.5 s back-off"
    );
}

#[tokio::test]
async fn every_version_reaches_the_server_as_exchange_spells_it() {
    let users = users_file();
    let server = ews(&users, &[]);
    let app = TestApp::spawn().await;
    let versions = [
        (
            pb::ExchangeVersion::ExchangeVersion2007Sp1,
            "Exchange2007_SP1",
        ),
        (pb::ExchangeVersion::ExchangeVersion2010, "Exchange2010"),
        (
            pb::ExchangeVersion::ExchangeVersion2010Sp1,
            "Exchange2010_SP1",
        ),
        (
            pb::ExchangeVersion::ExchangeVersion2010Sp2,
            "Exchange2010_SP2",
        ),
        (pb::ExchangeVersion::ExchangeVersion2013, "Exchange2013"),
        (
            pb::ExchangeVersion::ExchangeVersion2013Sp1,
            "Exchange2013_SP1",
        ),
        (pb::ExchangeVersion::ExchangeVersion2016, "Exchange2016"),
    ];
    for (i, (v, _)) in versions.iter().enumerate() {
        let mut c = seed_form(&format!("v{i}"), server.port);
        if let Some(pb::connection::Backend::Exchange(e)) = &mut c.backend {
            e.version = *v as i32;
        }
        app.create_ok(c).await;
        let n = wait_final(&app, &send(&app, &format!("v{i}"), message("x")).await).await;
        assert_eq!(n.state, S::Delivered as i32, "{v:?}: {n:?}");
    }
    let seen: Vec<String> = create_items(&server)
        .iter()
        .map(|r| r["server_version"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<&str> = versions.iter().map(|(_, s)| *s).collect();
    assert_eq!(seen, expected);
}

/// Seconds since midnight of an ISO 8601 time such as
/// `2026-11-26T14:55:45.300110+00:00`.
fn seconds_of_day(iso: &str) -> f64 {
    let time = iso.split('T').nth(1).unwrap_or_default();
    let time = &time[..time.find(['+', 'Z', '-']).unwrap_or(time.len())];
    let mut parts = time
        .split(':')
        .map(|p| p.parse::<f64>().unwrap_or_default());
    let (h, m, s) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    h * 3600.0 + m * 60.0 + s
}
