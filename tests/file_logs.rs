//! Per-connection file logs at the connection's level: FULL writes every
//! step, ERRORS only failures, OFF nothing; never a password or a body; a
//! level change applies without a restart.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{TestApp, servers::PyServer};
use notigate::pb::{self, NotificationState as S};

const PASSWORD: &str = "Log-Secret-Pa55";
const BODY: &str = "the body must stay out of the logs";

fn users() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("users");
    std::fs::write(f.path(), format!("CORP:mailer:{PASSWORD}\n")).expect("write");
    f
}

fn connection(name: &str, port: u16, level: pb::LogLevel) -> pb::Connection {
    pb::Connection {
        name: name.into(),
        log_level: level as i32,
        sender: Some(pb::Address {
            address: "alerts@example.com".into(),
            display_name: String::new(),
        }),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: u32::from(port),
            tls: pb::SmtpTls::None as i32,
            auth: pb::SmtpAuth::Plain as i32,
            username: "mailer".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn send_and_wait(app: &TestApp, connection: &str, to: &str) -> pb::Notification {
    let id = app
        .notifier
        .clone()
        .send(pb::SendRequest {
            connection: connection.into(),
            message: Some(pb::EmailMessage {
                to: vec![pb::Address {
                    address: to.into(),
                    display_name: String::new(),
                }],
                subject: "Отчёт за ноябрь".into(),
                text_body: BODY.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner()
        .id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = app
            .notifier
            .clone()
            .get_notification(pb::GetNotificationRequest { id: id.clone() })
            .await
            .expect("Get")
            .into_inner();
        if [S::Delivered as i32, S::Failed as i32].contains(&n.state) || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test]
async fn each_level_writes_what_it_promises_and_never_secrets() {
    let users = users();
    let smtp = PyServer::smtp(&[
        "--auth",
        "PLAIN",
        "--users",
        users.path().to_str().unwrap(),
        "--fail-rcpt",
        "gone@example.com",
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path().join("logs");
    let app = TestApp::spawn_with(
        &dir.path().join("data"),
        &["--log-dir", logs.to_str().unwrap()],
        &[],
    )
    .await;
    app.create_ok(connection("full", smtp.port, pb::LogLevel::Full))
        .await;
    app.create_ok(connection("errors", smtp.port, pb::LogLevel::Errors))
        .await;
    app.create_ok(connection("off", smtp.port, pb::LogLevel::Off))
        .await;

    let ok = send_and_wait(&app, "full", "ok@example.com").await;
    assert_eq!(ok.state, S::Delivered as i32);
    let failed = send_and_wait(&app, "full", "gone@example.com").await;
    assert_eq!(failed.state, S::Failed as i32);
    let full = read_log(&logs, "full");
    for expected in [
        format!(
            "id={} queued to=ok@example.com subject=\"Отчёт за ноябрь\"",
            ok.id
        ),
        format!("id={} attempt 1 started", ok.id),
        format!("id={} delivered attempt=1", ok.id),
        format!("id={} failed attempt=1", failed.id),
        "550".to_owned(),
    ] {
        assert!(full.contains(&expected), "missing {expected:?} in:\n{full}");
    }

    let delivered = send_and_wait(&app, "errors", "ok@example.com").await;
    let failed = send_and_wait(&app, "errors", "gone@example.com").await;
    let errors = read_log(&logs, "errors");
    assert!(
        !errors.contains(&delivered.id),
        "a success at ERRORS level:\n{errors}"
    );
    assert!(
        errors.contains(&format!("id={} failed", failed.id)),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 1, "{errors}");

    send_and_wait(&app, "off", "gone@example.com").await;
    assert!(read_log(&logs, "off").is_empty());

    for entry in std::fs::read_dir(&logs).expect("log dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        assert!(!text.contains(PASSWORD), "password in a file log");
        assert!(!text.contains(BODY), "body in a file log");
    }
}

#[tokio::test]
async fn a_level_change_applies_without_a_restart() {
    let users = users();
    let smtp = PyServer::smtp(&["--auth", "PLAIN", "--users", users.path().to_str().unwrap()]);
    let dir = tempfile::tempdir().expect("dir");
    let app = TestApp::spawn_with(dir.path(), &[], &[]).await;
    let logs = dir.path().join("logs");
    app.create_ok(connection("main", smtp.port, pb::LogLevel::Off))
        .await;
    send_and_wait(&app, "main", "a@example.com").await;
    assert!(
        read_log(&logs, "main").is_empty(),
        "the default log dir is <data-dir>/logs"
    );
    let mut c = app.get_ok("main").await;
    c.log_level = pb::LogLevel::Full as i32;
    app.update(c, &["log_level"]).await.expect("update");
    let n = send_and_wait(&app, "main", "a@example.com").await;
    assert!(read_log(&logs, "main").contains(&format!("id={} delivered", n.id)));
}
