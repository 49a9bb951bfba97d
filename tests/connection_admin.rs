//! `notigate.v1.ConnectionAdmin` as an admin tool uses it: every RPC's happy
//! path, missing and duplicate names, paging, etags, the default connection,
//! password handling, and `TestConnection` while no backend is built yet.

mod common;

use common::{servers::PyServer, *};
use notigate::pb::{self, test_connection_request::Target};
use tonic::Code;

// ---------------------------------------------------------------------------
// Happy paths

#[tokio::test]
async fn create_returns_the_connection_without_password_and_with_server_fields() {
    let app = TestApp::spawn().await;
    let sent = smtp_connection("Main_SMTP");

    let created = app.create_ok(sent.clone()).await;

    assert_eq!(without_server_fields(&created), as_echoed(&sent));
    assert_eq!(returned_password(&created), "");
    assert!(password_set(&created));
    assert!(!created.etag.is_empty(), "the server sets an etag");
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);
}

#[tokio::test]
async fn create_then_get_returns_the_connection_without_password() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Main_SMTP")).await;

    let got = app.get_ok("Main_SMTP").await;

    assert_eq!(got, created);
    assert_eq!(returned_password(&got), "");
    assert!(password_set(&got));
}

#[tokio::test]
async fn an_exchange_connection_round_trips() {
    let app = TestApp::spawn().await;
    let sent = exchange_connection("Corp_Exchange");

    let created = app.create_ok(sent.clone()).await;
    let got = app.get_ok("Corp_Exchange").await;

    assert_eq!(without_server_fields(&created), as_echoed(&sent));
    assert_eq!(got, created);
    assert_eq!(exchange(&got).password, "");
    assert!(exchange(&got).password_set);
}

#[tokio::test]
async fn a_relay_without_authentication_is_stored_without_password() {
    let app = TestApp::spawn().await;
    let mut relay = smtp_connection("Relay");
    {
        let s = smtp_mut(&mut relay);
        s.auth = pb::SmtpAuth::Unspecified as i32;
        s.username.clear();
        s.password.clear();
        s.tls = pb::SmtpTls::None as i32;
        s.port = 25;
    }

    let created = app.create_ok(relay.clone()).await;

    assert_eq!(without_server_fields(&created), as_echoed(&relay));
    assert!(!password_set(&created));
}

#[tokio::test]
async fn unspecified_log_level_is_stored_as_errors() {
    let app = TestApp::spawn().await;
    let mut c = smtp_connection("Quiet");
    c.log_level = pb::LogLevel::Unspecified as i32;

    let created = app.create_ok(c).await;

    assert_eq!(created.log_level, pb::LogLevel::Errors as i32);
}

#[tokio::test]
async fn a_trusted_ca_certificate_is_accepted_and_returned() {
    let app = TestApp::spawn().await;
    let mut c = smtp_connection("Corp_CA");
    smtp_mut(&mut c).trusted_ca_pem = TEST_CA_PEM.into();

    let created = app.create_ok(c).await;

    assert_eq!(smtp(&created).trusted_ca_pem, TEST_CA_PEM);
}

#[tokio::test]
async fn list_returns_every_connection_in_name_order_without_passwords() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("b_smtp")).await;
    app.create_ok(exchange_connection("a_exchange")).await;
    app.create_ok(smtp_connection("C_upper")).await;

    let page = app.list(0, "").await.expect("listing");

    let names: Vec<&str> = page.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["C_upper", "a_exchange", "b_smtp"],
        "byte order of names"
    );
    assert!(page.next_page_token.is_empty());
    for c in &page.connections {
        assert_eq!(returned_password(c), "", "{}", c.name);
        assert!(password_set(c), "{}", c.name);
        assert!(!c.etag.is_empty());
    }
}

#[tokio::test]
async fn list_of_an_empty_store_is_empty() {
    let app = TestApp::spawn().await;

    let page = app.list(0, "").await.expect("listing");

    assert!(page.connections.is_empty());
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn update_with_a_mask_changes_only_the_masked_fields() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Main_SMTP")).await;
    let mut change = smtp_connection("Main_SMTP");
    change.description = "new description".into();
    smtp_mut(&mut change).port = 2525;
    smtp_mut(&mut change).host = "ignored.example.com".into();
    change.disabled = true;

    let updated = app
        .update(change, &["description", "smtp.port"])
        .await
        .expect("updating");

    let mut expected = without_server_fields(&created);
    expected.description = "new description".into();
    smtp_mut(&mut expected).port = 2525;
    assert_eq!(without_server_fields(&updated), expected);
    assert_ne!(updated.etag, created.etag);
    assert_eq!(updated.create_time, created.create_time);
    assert_eq!(app.get_ok("Main_SMTP").await, updated);
}

#[tokio::test]
async fn update_can_switch_the_backend_with_the_backend_in_the_mask() {
    let app = TestApp::spawn().await;
    app.create_ok(exchange_connection("Switch")).await;
    let smtp = smtp_connection("Switch");

    let updated = app.update(smtp.clone(), &["smtp"]).await.expect("updating");

    assert_eq!(updated.backend, as_echoed(&smtp).backend);
    assert!(password_set(&updated));
}

#[tokio::test]
async fn delete_removes_the_connection() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("Doomed")).await;
    app.create_ok(smtp_connection("Kept")).await;

    app.delete("Doomed", "").await.expect("deleting");

    assert_code(app.get("Doomed").await, Code::NotFound);
    let names: Vec<String> = app.list_all().await.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["Kept"]);
}

#[tokio::test]
async fn a_deleted_name_can_be_created_again() {
    let app = TestApp::spawn().await;
    let first = app.create_ok(smtp_connection("Reborn")).await;
    app.delete("Reborn", &first.etag).await.expect("deleting");

    let second = app.create_ok(exchange_connection("Reborn")).await;

    assert_ne!(second.etag, first.etag);
    assert!(matches!(
        second.backend,
        Some(pb::connection::Backend::Exchange(_))
    ));
}

// ---------------------------------------------------------------------------
// TestConnection, against the real test servers (tests/servers/)

/// A users file for the test servers: `CORP:mailer:<PASSWORD>`.
fn users_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("users file");
    std::fs::write(f.path(), format!("CORP:mailer:{PASSWORD}\n")).expect("write users");
    f
}

/// The SMTP fixture pointed at the test server: plain text, PLAIN auth.
fn smtp_at(name: &str, port: u16) -> pb::Connection {
    let mut c = smtp_connection(name);
    let s = smtp_mut(&mut c);
    s.host = "127.0.0.1".into();
    s.port = u32::from(port);
    s.tls = pb::SmtpTls::None as i32;
    s.hello_name.clear();
    c
}

#[tokio::test]
async fn test_connection_by_name_reports_the_last_stage_and_the_server_words() {
    let users = users_file();
    let users = users.path().to_str().unwrap();
    let smtp = PyServer::smtp(&["--auth", "PLAIN", "--users", users, "--require-auth"]);
    let ews = PyServer::start(
        "ews_server.py",
        &["--auth", "basic", "--users", users, "--quiet"],
    );
    let app = TestApp::spawn().await;
    app.create_ok(smtp_at("Main_SMTP", smtp.port)).await;
    let mut exchange = exchange_connection("Corp_Exchange");
    {
        let e = exchange_mut(&mut exchange);
        e.server = format!("127.0.0.1:{}", ews.port);
        e.allow_plain_http = true;
        e.auth = pb::ExchangeAuth::Basic as i32;
        e.username = "mailer".into();
    }
    app.create_ok(exchange).await;

    let r = app
        .test_connection(Target::Name("Main_SMTP".into()))
        .await
        .expect("TestConnection");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stage, "sender");
    assert!(r.latency.is_some());
    let r = app
        .test_connection(Target::Name("Corp_Exchange".into()))
        .await
        .expect("TestConnection");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stage, "ews");
    assert!(smtp.received().is_empty(), "a test must not send mail");

    let mut wrong = smtp_at("Wrong_Password", smtp.port);
    smtp_mut(&mut wrong).password = "not-the-password".into();
    app.create_ok(wrong).await;
    let r = app
        .test_connection(Target::Name("Wrong_Password".into()))
        .await
        .expect("TestConnection");
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.stage, "auth");
    assert!(r.detail.contains("535"), "{r:?}");
    assert!(
        !r.detail.contains("not-the-password"),
        "password leaked: {r:?}"
    );
}

#[tokio::test]
async fn test_connection_of_unsaved_settings_stores_nothing() {
    let users = users_file();
    let smtp = PyServer::smtp(&["--auth", "PLAIN", "--users", users.path().to_str().unwrap()]);
    let app = TestApp::spawn().await;

    let r = app
        .test_connection(Target::Connection(smtp_at("Unsaved", smtp.port)))
        .await
        .expect("TestConnection");
    assert!(r.ok, "{r:?}");
    assert_code(app.get("Unsaved").await, Code::NotFound);

    let r = app
        .test_connection(Target::Connection(smtp_at("Unsaved", 9)))
        .await
        .expect("TestConnection");
    assert!(!r.ok);
    assert_eq!(r.stage, "connect", "{r:?}");
}

#[tokio::test]
async fn test_connection_with_bad_unsaved_settings_names_the_bad_fields() {
    let app = TestApp::spawn().await;
    let mut bad = smtp_connection("Unsaved");
    bad.sender = Some(pb::Address {
        address: "not an address".into(),
        display_name: String::new(),
    });
    smtp_mut(&mut bad).port = 0;

    assert_invalid(
        app.test_connection(Target::Connection(bad)).await,
        &["connection.sender.address", "connection.smtp.port"],
    );
}

#[tokio::test]
async fn test_connection_of_an_unknown_name_is_not_found() {
    let app = TestApp::spawn().await;

    assert_code(
        app.test_connection(Target::Name("Nobody".into())).await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn test_connection_without_a_target_is_invalid() {
    let app = TestApp::spawn().await;

    let status = app
        .admin()
        .test_connection(pb::TestConnectionRequest { target: None })
        .await;

    assert_invalid(status, &["target"]);
}

#[tokio::test]
async fn test_connection_of_unsaved_settings_without_password_uses_the_saved_password() {
    let users = users_file();
    let smtp = PyServer::smtp(&[
        "--auth",
        "PLAIN",
        "--users",
        users.path().to_str().unwrap(),
        "--require-auth",
    ]);
    let app = TestApp::spawn().await;
    app.create_ok(smtp_at("Saved", 9)).await;
    // Edited, unsaved settings (another port), password left empty.
    let mut edited = smtp_at("Saved", smtp.port);
    smtp_mut(&mut edited).password.clear();
    let mut unknown = edited.clone();
    unknown.name = "NotSaved".into();

    // The saved password completes the settings and the server accepts it.
    let r = app
        .test_connection(Target::Connection(edited))
        .await
        .expect("TestConnection");
    assert!(r.ok, "{r:?}");
    // Without a saved connection to borrow from, the password is missing.
    assert_invalid(
        app.test_connection(Target::Connection(unknown)).await,
        &["connection.smtp.password"],
    );
}

// ---------------------------------------------------------------------------
// Names: duplicates and missing

#[tokio::test]
async fn creating_a_duplicate_name_is_already_exists_and_keeps_the_first() {
    let app = TestApp::spawn().await;
    let first = app.create_ok(smtp_connection("Twice")).await;

    assert_code(
        app.create(exchange_connection("Twice")).await,
        Code::AlreadyExists,
    );

    assert_eq!(app.get_ok("Twice").await, first);
}

#[tokio::test]
async fn get_update_and_delete_of_a_missing_connection_are_not_found() {
    let app = TestApp::spawn().await;

    assert_code(app.get("Missing").await, Code::NotFound);
    assert_code(
        app.update(smtp_connection("Missing"), &["description"])
            .await,
        Code::NotFound,
    );
    assert_code(app.delete("Missing", "").await, Code::NotFound);
    assert!(app.list_all().await.is_empty(), "nothing was created");
}

// ---------------------------------------------------------------------------
// Pagination

#[tokio::test]
async fn list_pages_through_connections_in_name_order_with_opaque_tokens() {
    let app = TestApp::spawn().await;
    let names = [
        "conn_4", "conn_1", "conn_7", "conn_3", "conn_6", "conn_2", "conn_5",
    ];
    for name in names {
        app.create_ok(smtp_connection(name)).await;
    }

    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.list(3, &token).await.expect("listing a page");
        let page_names: Vec<String> = page.connections.iter().map(|c| c.name.clone()).collect();
        if let Some(last) = page_names.last() {
            assert!(
                !page.next_page_token.contains(last.as_str()),
                "token {:?} shows the key in clear",
                page.next_page_token
            );
        }
        pages.push(page_names);
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "paging does not end");
        token = page.next_page_token;
    }

    assert_eq!(
        pages,
        [
            vec!["conn_1", "conn_2", "conn_3"],
            vec!["conn_4", "conn_5", "conn_6"],
            vec!["conn_7"],
        ]
    );
}

#[tokio::test]
async fn a_page_token_stays_valid_after_its_last_connection_is_deleted() {
    let app = TestApp::spawn().await;
    for name in ["a", "b", "c", "d"] {
        app.create_ok(smtp_connection(name)).await;
    }
    let first = app.list(2, "").await.expect("first page");
    app.delete("b", "")
        .await
        .expect("deleting the last of the page");

    let second = app
        .list(2, &first.next_page_token)
        .await
        .expect("second page");

    let names: Vec<&str> = second.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["c", "d"]);
}

#[tokio::test]
async fn a_page_that_ends_exactly_at_the_last_connection_has_no_next_token() {
    let app = TestApp::spawn().await;
    for name in ["a", "b", "c"] {
        app.create_ok(smtp_connection(name)).await;
    }

    let page = app.list(3, "").await.expect("listing");

    assert_eq!(page.connections.len(), 3);
    assert!(
        page.next_page_token.is_empty(),
        "{:?}",
        page.next_page_token
    );
}

#[tokio::test]
async fn page_size_zero_means_fifty_and_over_a_thousand_is_capped_at_a_thousand() {
    let app = TestApp::spawn().await;
    // 1001 connections, created concurrently (the store commits them in groups).
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1001 {
        let mut admin = app.admin();
        tasks.spawn(async move {
            let mut c = smtp_connection(&format!("c{i:04}"));
            smtp_mut(&mut c).auth = pb::SmtpAuth::None as i32;
            smtp_mut(&mut c).password.clear();
            admin
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(c),
                })
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("creating");
    }

    let default = app.list(0, "").await.expect("page_size 0");
    assert_eq!(default.connections.len(), 50);
    assert!(!default.next_page_token.is_empty());

    let huge = app
        .list(i32::MAX, "")
        .await
        .expect("a huge page_size is capped, not refused");
    assert_eq!(huge.connections.len(), 1000);
    assert_eq!(
        huge.connections.last().map(|c| c.name.as_str()),
        Some("c0999")
    );
    assert!(!huge.next_page_token.is_empty());

    let rest = app
        .list(5000, &huge.next_page_token)
        .await
        .expect("the rest");
    let rest_names: Vec<&str> = rest.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(rest_names, ["c1000"]);
    assert!(rest.next_page_token.is_empty());
}

// ---------------------------------------------------------------------------
// Etags

#[tokio::test]
async fn update_with_a_stale_etag_is_aborted_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let first = app.create_ok(smtp_connection("Etag")).await;
    let mut change = smtp_connection("Etag");
    change.description = "first writer".into();
    change.etag = first.etag.clone();
    let current = app
        .update(change, &["description"])
        .await
        .expect("first update");

    let mut stale = smtp_connection("Etag");
    stale.description = "second writer".into();
    stale.etag = first.etag.clone();
    assert_code(app.update(stale, &["description"]).await, Code::Aborted);

    assert_eq!(app.get_ok("Etag").await, current);
}

#[tokio::test]
async fn update_with_the_current_etag_succeeds_and_changes_the_etag() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Etag")).await;
    let mut change = smtp_connection("Etag");
    change.description = "checked".into();
    change.etag = created.etag.clone();

    let updated = app
        .update(change, &["description"])
        .await
        .expect("updating");

    assert_eq!(updated.description, "checked");
    assert_ne!(updated.etag, created.etag);
    assert!(!updated.etag.is_empty());
}

#[tokio::test]
async fn every_update_changes_the_etag_even_without_an_etag_check() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Etag")).await;

    let first = app
        .update(smtp_connection("Etag"), &["description"])
        .await
        .expect("update 1");
    let second = app
        .update(smtp_connection("Etag"), &["description"])
        .await
        .expect("update 2");

    assert_ne!(first.etag, created.etag);
    assert_ne!(second.etag, first.etag);
}

#[tokio::test]
async fn delete_with_a_stale_etag_is_aborted_and_keeps_the_connection() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Etag")).await;
    let current = app
        .update(smtp_connection("Etag"), &["description"])
        .await
        .expect("updating");

    assert_code(app.delete("Etag", &created.etag).await, Code::Aborted);

    assert_eq!(app.get_ok("Etag").await, current);
}

#[tokio::test]
async fn delete_with_the_current_etag_succeeds() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Etag")).await;

    app.delete("Etag", &created.etag).await.expect("deleting");

    assert_code(app.get("Etag").await, Code::NotFound);
}

#[tokio::test]
async fn delete_with_an_empty_etag_skips_the_check() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("Etag")).await;
    app.update(smtp_connection("Etag"), &["description"])
        .await
        .expect("updating");

    app.delete("Etag", "").await.expect("deleting");

    assert_code(app.get("Etag").await, Code::NotFound);
}

// ---------------------------------------------------------------------------
// The default connection

async fn defaults(app: &TestApp) -> Vec<String> {
    app.list_all()
        .await
        .into_iter()
        .filter(|c| c.is_default)
        .map(|c| c.name)
        .collect()
}

#[tokio::test]
async fn creating_a_new_default_clears_the_previous_one_and_changes_its_etag() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    let a = app.create_ok(a).await;
    assert!(a.is_default);
    let mut b = exchange_connection("B");
    b.is_default = true;

    let b = app.create_ok(b).await;

    assert!(b.is_default);
    let a_after = app.get_ok("A").await;
    assert!(!a_after.is_default);
    assert_ne!(a_after.etag, a.etag, "A changed, so its etag changes");
    assert_eq!(defaults(&app).await, ["B"]);
}

#[tokio::test]
async fn updating_a_connection_to_default_clears_the_previous_one() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    let a = app.create_ok(a).await;
    app.create_ok(smtp_connection("B")).await;
    let mut change = smtp_connection("B");
    change.is_default = true;

    let b = app.update(change, &["is_default"]).await.expect("updating");

    assert!(b.is_default);
    let a_after = app.get_ok("A").await;
    assert!(!a_after.is_default);
    assert_ne!(a_after.etag, a.etag);
    assert_eq!(defaults(&app).await, ["B"]);
}

#[tokio::test]
async fn a_stale_etag_on_the_previous_default_fails_after_it_lost_the_flag() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    let a = app.create_ok(a).await;
    let mut b = smtp_connection("B");
    b.is_default = true;
    app.create_ok(b).await;

    // A client that read A before B took the flag must re-read A.
    assert_code(app.delete("A", &a.etag).await, Code::Aborted);
}

#[tokio::test]
async fn unsetting_the_default_leaves_no_default() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    app.create_ok(a).await;
    app.create_ok(smtp_connection("B")).await;

    let a = app
        .update(smtp_connection("A"), &["is_default"])
        .await
        .expect("updating");

    assert!(!a.is_default);
    assert!(defaults(&app).await.is_empty());
}

#[tokio::test]
async fn deleting_the_default_then_making_another_default_works() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    app.create_ok(a).await;
    app.create_ok(smtp_connection("B")).await;
    app.delete("A", "").await.expect("deleting A");
    assert!(defaults(&app).await.is_empty());
    let mut b = smtp_connection("B");
    b.is_default = true;

    app.update(b, &["is_default"]).await.expect("updating B");

    assert_eq!(defaults(&app).await, ["B"]);
}

// ---------------------------------------------------------------------------
// Passwords

#[tokio::test]
async fn no_response_ever_carries_a_password() {
    let app = TestApp::spawn().await;
    let created_smtp = app.create_ok(smtp_connection("S")).await;
    let created_ews = app.create_ok(exchange_connection("E")).await;
    let got = app.get_ok("S").await;
    let listed = app.list_all().await;
    let mut change = smtp_connection("S");
    smtp_mut(&mut change).password = "brand-new-password".into();
    let updated = app
        .update(change, &["smtp.password"])
        .await
        .expect("updating");

    for c in [&created_smtp, &created_ews, &got, &updated]
        .into_iter()
        .chain(listed.iter())
    {
        assert_eq!(returned_password(c), "", "{} leaks its password", c.name);
        assert!(password_set(c), "{} should report password_set", c.name);
    }
}

#[tokio::test]
async fn update_without_password_in_the_mask_keeps_the_password() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("S")).await;
    let mut change = smtp_connection("S");
    smtp_mut(&mut change).password.clear();
    smtp_mut(&mut change).port = 2525;

    let updated = app
        .update(change, &["description", "smtp.port", "smtp.username"])
        .await
        .expect("updating");

    assert!(smtp(&updated).password_set);
    assert_eq!(smtp(&updated).port, 2525);
}

#[tokio::test]
async fn update_of_the_whole_backend_without_a_password_keeps_the_password() {
    let app = TestApp::spawn().await;
    app.create_ok(exchange_connection("E")).await;
    let mut change = exchange_connection("E");
    exchange_mut(&mut change).password.clear();
    exchange_mut(&mut change).server = "ews.corp.example.com:8443/ews/exchange.asmx".into();

    let updated = app.update(change, &["exchange"]).await.expect("updating");

    assert!(exchange(&updated).password_set);
    assert_eq!(
        exchange(&updated).server,
        "ews.corp.example.com:8443/ews/exchange.asmx"
    );
}

#[tokio::test]
async fn an_empty_password_in_the_mask_keeps_the_stored_password() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("S")).await;
    let mut change = smtp_connection("S");
    smtp_mut(&mut change).password.clear();

    let updated = app
        .update(change, &["smtp.password"])
        .await
        .expect("updating");

    assert!(smtp(&updated).password_set);
}

#[tokio::test]
async fn update_with_a_new_password_stores_it() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("S")).await;
    let mut change = smtp_connection("S");
    smtp_mut(&mut change).password = "rotated-Passw0rd".into();

    let updated = app
        .update(change, &["smtp.password"])
        .await
        .expect("updating");

    assert!(smtp(&updated).password_set);
    assert_eq!(smtp(&updated).password, "");
    assert_ne!(updated.etag, created.etag);
}

#[tokio::test]
async fn switching_auth_to_none_clears_the_stored_password() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("S")).await;
    let mut none = smtp_connection("S");
    smtp_mut(&mut none).auth = pb::SmtpAuth::None as i32;
    smtp_mut(&mut none).password.clear();

    let updated = app.update(none, &["smtp.auth"]).await.expect("updating");

    assert!(!smtp(&updated).password_set);
    assert!(!smtp(&app.get_ok("S").await).password_set);
    // The password is really gone: authenticating again needs a new one.
    let mut plain = smtp_connection("S");
    plain.etag.clear();
    smtp_mut(&mut plain).password.clear();
    assert_invalid(
        app.update(plain, &["smtp.auth"]).await,
        &["connection.smtp.password"],
    );
}

#[tokio::test]
async fn switching_exchange_auth_to_none_clears_the_stored_password() {
    let app = TestApp::spawn().await;
    app.create_ok(exchange_connection("E")).await;
    let mut none = exchange_connection("E");
    exchange_mut(&mut none).auth = pb::ExchangeAuth::None as i32;

    let updated = app
        .update(none, &["exchange.auth"])
        .await
        .expect("updating");

    assert!(!exchange(&updated).password_set);
}

#[tokio::test]
async fn an_empty_mask_updates_exactly_the_fields_set_in_the_request() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("S")).await;
    let change = pb::Connection {
        name: "S".into(),
        description: "only this and the port".into(),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            port: 2525,
            ..Default::default()
        })),
        ..Default::default()
    };

    let updated = app.update(change, &[]).await.expect("updating");

    let mut expected = without_server_fields(&created);
    expected.description = "only this and the port".into();
    smtp_mut(&mut expected).port = 2525;
    assert_eq!(without_server_fields(&updated), expected);
    assert!(smtp(&updated).password_set, "the password is kept");
}

#[tokio::test]
async fn a_star_mask_replaces_every_field_but_keeps_an_unsent_password() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("S")).await;
    let replacement = pb::Connection {
        name: "S".into(),
        sender: Some(pb::Address {
            address: "other@example.com".into(),
            display_name: String::new(),
        }),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            host: "relay.example.com".into(),
            port: 25,
            auth: pb::SmtpAuth::Login as i32,
            username: "other".into(),
            ..Default::default()
        })),
        ..Default::default()
    };

    let updated = app
        .update(replacement.clone(), &["*"])
        .await
        .expect("updating");

    let mut expected = as_echoed(&replacement);
    expected.log_level = pb::LogLevel::Errors as i32;
    smtp_mut(&mut expected).password_set = true;
    assert_eq!(without_server_fields(&updated), expected);
}

#[tokio::test]
async fn an_absent_mask_behaves_like_an_empty_mask() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("S")).await;
    let change = pb::Connection {
        name: "S".into(),
        description: "no mask at all".into(),
        ..Default::default()
    };

    let updated = app
        .admin()
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(change),
            update_mask: None,
        })
        .await
        .expect("updating")
        .into_inner();

    let mut expected = without_server_fields(&created);
    expected.description = "no mask at all".into();
    assert_eq!(without_server_fields(&updated), expected);
}

#[tokio::test]
async fn an_empty_mask_with_a_new_password_replaces_it() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("S")).await;
    let change = pb::Connection {
        name: "S".into(),
        backend: Some(pb::connection::Backend::Smtp(pb::SmtpSettings {
            password: "rotated-Passw0rd".into(),
            ..Default::default()
        })),
        ..Default::default()
    };

    let updated = app.update(change, &[]).await.expect("updating");

    assert!(smtp(&updated).password_set);
    assert_eq!(smtp(&updated).host, "smtp.example.com", "other fields kept");
}

/// A CA certificate for the `trusted_ca_pem` tests (self-signed, P-256).
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjjCCATOgAwIBAgIUAjAdFqRVpShSuX5obUrbZAaHP/4wCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQbm90aWdhdGUgdGVzdCBDQTAgFw0yNjExMjYxNDI3MjNaGA8y
MTI2MTEwMjE0MjcyM1owGzEZMBcGA1UEAwwQbm90aWdhdGUgdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABOfmElRvdT7Fvq/Po091WRgA4tN7SAiGF8My
jQBPoaifBLGZBfbLV44JZOJsn5K8ffllwX84G0QHDMWvtCfSHXCjUzBRMB0GA1Ud
DgQWBBRjJ630piJcXAkCZi+pP/tMOkdUVjAfBgNVHSMEGDAWgBRjJ630piJcXAkC
Zi+pP/tMOkdUVjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDz
+Ts5QLQBqYdJ3U5ZMJMZPhlbH7c3+haeXO54C4XD7AIhAOhYM9Lm/hhaHgx7wssV
qfvPjc2kbgDJSDCP9whJKvrH
-----END CERTIFICATE-----
";
