//! Bad input to `ConnectionAdmin`: every rule answers `INVALID_ARGUMENT` with a
//! `BadRequest` naming the exact field, and a refused request changes nothing.

mod common;

use common::*;
use notigate::pb;
use tonic::Code;

fn with_smtp(name: &str, change: impl FnOnce(&mut pb::SmtpSettings)) -> pb::Connection {
    let mut c = smtp_connection(name);
    change(smtp_mut(&mut c));
    c
}

fn with_exchange(name: &str, change: impl FnOnce(&mut pb::ExchangeSettings)) -> pb::Connection {
    let mut c = exchange_connection(name);
    change(exchange_mut(&mut c));
    c
}

/// Creates `connection` expecting a refusal naming `fields`, and checks that
/// nothing was stored.
async fn assert_create_refused(
    app: &TestApp,
    connection: pb::Connection,
    fields: &[&str],
) -> tonic::Status {
    let name = connection.name.clone();
    let status = assert_invalid(app.create(connection).await, fields);
    if !name.is_empty() {
        let after = app.get(&name).await;
        assert!(
            matches!(&after, Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument)),
            "a refused create stored {name:?}: {after:?}"
        );
    }
    status
}

#[tokio::test]
async fn names_outside_latin_letters_digits_and_underscore_are_refused() {
    let app = TestApp::spawn().await;
    let too_long = "a".repeat(65);
    for bad in [
        "with space",
        "dash-ed",
        "кириллица",
        too_long.as_str(),
        "",
        "dot.ted",
        "tab\t",
    ] {
        let status = assert_create_refused(&app, smtp_connection(bad), &["connection.name"]).await;
        assert!(
            !status.message().is_empty(),
            "{bad:?}: the message says why"
        );
    }
    assert!(app.list_all().await.is_empty());
}

#[tokio::test]
async fn names_of_sixty_four_latin_letters_digits_and_underscores_are_accepted() {
    let app = TestApp::spawn().await;
    let longest = format!("{}_9", "Z".repeat(62));
    assert_eq!(longest.len(), 64);

    for good in [longest.as_str(), "a", "_", "Main_SMTP_2", "0"] {
        app.create_ok(smtp_connection(good)).await;
    }
}

#[tokio::test]
async fn get_and_delete_with_an_invalid_name_name_the_field() {
    let app = TestApp::spawn().await;

    assert_invalid(app.get("bad name").await, &["name"]);
    assert_invalid(app.delete("bad-name", "").await, &["name"]);
    assert_invalid(
        app.update(smtp_connection("bad name"), &["description"])
            .await,
        &["connection.name"],
    );
}

#[tokio::test]
async fn create_without_a_connection_is_invalid() {
    let app = TestApp::spawn().await;

    let result = app
        .admin()
        .create_connection(pb::CreateConnectionRequest { connection: None })
        .await;

    assert_invalid(result, &["connection"]);
}

#[tokio::test]
async fn a_missing_or_malformed_sender_address_is_refused() {
    let app = TestApp::spawn().await;
    for bad in [
        "",
        "plain",
        "a@",
        "@example.com",
        "a@b.c\r\nBcc: x@y.z",
        " a@example.com",
    ] {
        let mut c = smtp_connection("Sender");
        c.sender = Some(pb::Address {
            address: bad.into(),
            display_name: "Уведомления".into(),
        });
        assert_create_refused(&app, c, &["connection.sender.address"]).await;
    }
    let mut no_sender = smtp_connection("Sender");
    no_sender.sender = None;
    assert_create_refused(&app, no_sender, &["connection.sender.address"]).await;
}

#[tokio::test]
async fn cr_or_lf_in_the_sender_display_name_is_refused() {
    let app = TestApp::spawn().await;
    for bad in [
        "Robot\r\nBcc: victim@example.com",
        "Robot\nX",
        "Robot\rX",
        "Robot\0",
    ] {
        let mut c = smtp_connection("Display");
        c.sender = Some(pb::Address {
            address: "noreply@example.com".into(),
            display_name: bad.into(),
        });
        assert_create_refused(&app, c, &["connection.sender.display_name"]).await;
    }
}

#[tokio::test]
async fn over_long_sender_fields_are_refused() {
    let app = TestApp::spawn().await;
    let mut long_address = smtp_connection("Long");
    long_address.sender = Some(pb::Address {
        address: format!("{}@example.com", "a".repeat(250)),
        display_name: String::new(),
    });
    let mut long_name = smtp_connection("Long");
    long_name.sender = Some(pb::Address {
        address: "noreply@example.com".into(),
        display_name: "Я".repeat(257),
    });

    assert_create_refused(&app, long_address, &["connection.sender.address"]).await;
    assert_create_refused(&app, long_name, &["connection.sender.display_name"]).await;
    let mut longest_name = smtp_connection("Long");
    longest_name.sender = Some(pb::Address {
        address: "noreply@example.com".into(),
        display_name: "Я".repeat(256),
    });
    app.create_ok(longest_name).await;
}

#[tokio::test]
async fn a_description_over_4096_characters_or_with_nul_is_refused() {
    let app = TestApp::spawn().await;
    let mut long = smtp_connection("Desc");
    long.description = "Ж".repeat(4097);
    let mut nul = smtp_connection("Desc");
    nul.description = "before\0after".into();

    assert_create_refused(&app, long, &["connection.description"]).await;
    assert_create_refused(&app, nul, &["connection.description"]).await;
    let mut longest = smtp_connection("Desc");
    longest.description = "Ж".repeat(4096);
    app.create_ok(longest).await;
}

#[tokio::test]
async fn a_hello_name_that_is_not_a_dns_name_or_address_literal_is_refused() {
    let app = TestApp::spawn().await;
    for bad in ["not a host", "gw.example.com:25", "[not-an-ip]"] {
        assert_create_refused(
            &app,
            with_smtp("Helo", |s| s.hello_name = bad.into()),
            &["connection.smtp.hello_name"],
        )
        .await;
    }
    for (i, good) in ["gw.example.com", "[192.0.2.1]", "[IPv6:2001:db8::1]", ""]
        .into_iter()
        .enumerate()
    {
        app.create_ok(with_smtp(&format!("Helo_{i}"), |s| {
            s.hello_name = good.into()
        }))
        .await;
    }
}

#[tokio::test]
async fn a_connection_without_a_backend_is_refused() {
    let app = TestApp::spawn().await;
    let mut c = smtp_connection("NoBackend");
    c.backend = None;

    let status = assert_create_refused(&app, c, &["connection.backend"]).await;

    assert!(status.message().contains("smtp"), "{status:?}");
}

#[tokio::test]
async fn an_smtp_host_that_is_not_a_dns_name_or_ip_is_refused() {
    let app = TestApp::spawn().await;
    for bad in [
        "",
        "smtp.example.com:25",
        "smtp://smtp.example.com",
        "a b",
        "-bad.example.com",
        "a..b",
    ] {
        assert_create_refused(
            &app,
            with_smtp("Host", |s| s.host = bad.into()),
            &["connection.smtp.host"],
        )
        .await;
    }
    for (i, good) in ["127.0.0.1", "::1", "[::1]", "localhost"]
        .into_iter()
        .enumerate()
    {
        app.create_ok(with_smtp(&format!("Host_{i}"), |s| s.host = good.into()))
            .await;
    }
}

#[tokio::test]
async fn an_smtp_port_outside_1_to_65535_is_refused() {
    let app = TestApp::spawn().await;
    for bad in [0, 65536, 70000, u32::MAX] {
        assert_create_refused(
            &app,
            with_smtp("Port", |s| s.port = bad),
            &["connection.smtp.port"],
        )
        .await;
    }
    app.create_ok(with_smtp("Port_max", |s| s.port = 65535))
        .await;
    app.create_ok(with_smtp("Port_min", |s| s.port = 1)).await;
}

#[tokio::test]
async fn an_exchange_server_with_a_scheme_is_refused_with_a_clear_message() {
    let app = TestApp::spawn().await;
    for bad in [
        "https://mail.example.com",
        "http://mail.example.com/EWS/Exchange.asmx",
        "HTTPS://mail.example.com",
    ] {
        let status = assert_create_refused(
            &app,
            with_exchange("Ews", |e| e.server = bad.into()),
            &["connection.exchange.server"],
        )
        .await;
        let description = bad_request_descriptions(&status)
            .remove("connection.exchange.server")
            .unwrap_or_default();
        assert!(
            description.contains("protocol") || description.contains("scheme"),
            "the message should say the scheme must go: {description:?}"
        );
    }
    for bad in [
        "",
        "mail.example.com:0",
        "mail.example.com:99999",
        "mail example.com",
        "mail.example.com/ews?x=1",
    ] {
        assert_create_refused(
            &app,
            with_exchange("Ews", |e| e.server = bad.into()),
            &["connection.exchange.server"],
        )
        .await;
    }
}

#[tokio::test]
async fn an_exchange_server_without_a_scheme_is_accepted_as_given() {
    let app = TestApp::spawn().await;
    for (i, good) in [
        "mail.example.com",
        "mail.example.com:8443",
        "10.0.0.5/EWS/Exchange.asmx",
        "[::1]:80/ews",
    ]
    .into_iter()
    .enumerate()
    {
        let created = app
            .create_ok(with_exchange(&format!("Ews_{i}"), |e| {
                e.server = good.into()
            }))
            .await;
        assert_eq!(exchange(&created).server, good);
    }
}

#[tokio::test]
async fn exchange_version_and_auth_are_required() {
    let app = TestApp::spawn().await;
    let c = with_exchange("Ews", |e| {
        e.version = pb::ExchangeVersion::Unspecified as i32;
        e.auth = pb::ExchangeAuth::Unspecified as i32;
    });

    let status = assert_create_refused(
        &app,
        c,
        &["connection.exchange.version", "connection.exchange.auth"],
    )
    .await;

    let descriptions = bad_request_descriptions(&status);
    assert!(
        descriptions["connection.exchange.version"].contains("2016"),
        "the message helps choose: {descriptions:?}"
    );
}

#[tokio::test]
async fn unknown_enum_values_are_refused() {
    let app = TestApp::spawn().await;
    let cases: Vec<(pb::Connection, &str)> = vec![
        (with_smtp("Enum", |s| s.auth = 99), "connection.smtp.auth"),
        (with_smtp("Enum", |s| s.tls = 42), "connection.smtp.tls"),
        (
            {
                let mut c = smtp_connection("Enum");
                c.log_level = 7;
                c
            },
            "connection.log_level",
        ),
        (
            with_exchange("Enum", |e| e.version = 99),
            "connection.exchange.version",
        ),
        (
            with_exchange("Enum", |e| e.auth = -1),
            "connection.exchange.auth",
        ),
    ];
    for (c, field) in cases {
        let status = assert_create_refused(&app, c, &[field]).await;
        assert!(status.message().contains("unknown value"), "{status:?}");
    }
}

#[tokio::test]
async fn smtp_auth_gssapi_is_refused_as_not_supported_yet() {
    let app = TestApp::spawn().await;

    let status = assert_create_refused(
        &app,
        with_smtp("Kerberos", |s| s.auth = pb::SmtpAuth::Gssapi as i32),
        &["connection.smtp.auth"],
    )
    .await;

    let description = &bad_request_descriptions(&status)["connection.smtp.auth"];
    assert!(
        description.contains("GSSAPI") && description.contains("not supported yet"),
        "{description:?}"
    );
}

#[tokio::test]
async fn an_explicit_smtp_mechanism_requires_username_and_password() {
    let app = TestApp::spawn().await;
    for auth in [
        pb::SmtpAuth::Plain,
        pb::SmtpAuth::Login,
        pb::SmtpAuth::CramMd5,
        pb::SmtpAuth::Ntlm,
        pb::SmtpAuth::Xoauth2,
    ] {
        assert_create_refused(
            &app,
            with_smtp("Creds", |s| {
                s.auth = auth as i32;
                s.username.clear();
            }),
            &["connection.smtp.username"],
        )
        .await;
        assert_create_refused(
            &app,
            with_smtp("Creds", |s| {
                s.auth = auth as i32;
                s.password.clear();
            }),
            &["connection.smtp.password"],
        )
        .await;
    }
}

#[tokio::test]
async fn negotiated_smtp_auth_with_a_username_requires_a_password() {
    let app = TestApp::spawn().await;

    assert_create_refused(
        &app,
        with_smtp("Negotiate", |s| {
            s.auth = pb::SmtpAuth::Unspecified as i32;
            s.password.clear();
        }),
        &["connection.smtp.password"],
    )
    .await;
}

#[tokio::test]
async fn exchange_basic_or_ntlm_requires_username_and_password() {
    let app = TestApp::spawn().await;
    for auth in [pb::ExchangeAuth::Basic, pb::ExchangeAuth::Ntlm] {
        assert_create_refused(
            &app,
            with_exchange("Creds", |e| {
                e.auth = auth as i32;
                e.username.clear();
            }),
            &["connection.exchange.username"],
        )
        .await;
        assert_create_refused(
            &app,
            with_exchange("Creds", |e| {
                e.auth = auth as i32;
                e.password.clear();
            }),
            &["connection.exchange.password"],
        )
        .await;
    }
}

#[tokio::test]
async fn cr_or_lf_in_credentials_and_names_sent_on_the_wire_is_refused() {
    let app = TestApp::spawn().await;
    let cases: Vec<(pb::Connection, &str)> = vec![
        (
            with_smtp("Inject", |s| s.username = "user\r\nRCPT TO:<x@y>".into()),
            "connection.smtp.username",
        ),
        (
            with_smtp("Inject", |s| s.password = "pass\nword".into()),
            "connection.smtp.password",
        ),
        (
            with_smtp("Inject", |s| s.domain = "CORP\r".into()),
            "connection.smtp.domain",
        ),
        (
            with_smtp("Inject", |s| s.hello_name = "gw\r\nMAIL FROM:<x@y>".into()),
            "connection.smtp.hello_name",
        ),
        (
            with_exchange("Inject", |e| e.username = "robot\n".into()),
            "connection.exchange.username",
        ),
    ];
    for (c, field) in cases {
        assert_create_refused(&app, c, &[field]).await;
    }
}

#[tokio::test]
async fn a_trusted_ca_pem_without_a_certificate_is_refused() {
    let app = TestApp::spawn().await;
    let broken = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
    for bad in ["not a pem at all", broken] {
        assert_create_refused(
            &app,
            with_smtp("Ca", |s| s.trusted_ca_pem = bad.into()),
            &["connection.smtp.trusted_ca_pem"],
        )
        .await;
        assert_create_refused(
            &app,
            with_exchange("Ca", |e| e.trusted_ca_pem = bad.into()),
            &["connection.exchange.trusted_ca_pem"],
        )
        .await;
    }
}

#[tokio::test]
async fn a_timeout_of_zero_negative_or_over_ten_minutes_is_refused() {
    let app = TestApp::spawn().await;
    let durations = [(0, 0), (-5, 0), (601, 0), (0, -1)];
    for (seconds, nanos) in durations {
        let timeout = Some(prost_types::Duration { seconds, nanos });
        assert_create_refused(
            &app,
            with_smtp("Timeout", |s| s.timeout = timeout),
            &["connection.smtp.timeout"],
        )
        .await;
        assert_create_refused(
            &app,
            with_exchange("Timeout", |e| e.timeout = timeout),
            &["connection.exchange.timeout"],
        )
        .await;
    }
    app.create_ok(with_smtp("Timeout_max", |s| {
        s.timeout = Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        })
    }))
    .await;
}

#[tokio::test]
async fn every_bad_field_of_a_request_is_reported_at_once() {
    let app = TestApp::spawn().await;
    let mut c = with_smtp("bad name", |s| s.port = 0);
    c.sender = Some(pb::Address {
        address: "nope".into(),
        display_name: "x\ny".into(),
    });

    assert_create_refused(
        &app,
        c,
        &[
            "connection.name",
            "connection.sender.address",
            "connection.sender.display_name",
            "connection.smtp.port",
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------
// Update masks

#[tokio::test]
async fn an_unknown_update_mask_path_is_refused() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("S")).await;
    for bad in [
        "nonsense",
        "smtp.nonsense",
        "sender.phone",
        "smtp.",
        "SMTP.port",
        "",
    ] {
        let mut change = smtp_connection("S");
        change.description = "must not be stored".into();
        let status = assert_invalid(
            app.update(change, &["description", bad]).await,
            &["update_mask.paths"],
        );
        assert!(status.message().contains("update_mask"), "{status:?}");
    }
    assert_eq!(app.get_ok("S").await, created);
}

#[tokio::test]
async fn a_mask_path_of_the_other_backend_is_refused() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(exchange_connection("E")).await;
    let smtp_change = with_smtp("E", |s| s.port = 2525);

    let status = assert_invalid(
        app.update(smtp_change, &["smtp.port"]).await,
        &["update_mask.paths"],
    );

    assert!(status.message().contains("exchange"), "{status:?}");
    assert_eq!(app.get_ok("E").await, created);
}

#[tokio::test]
async fn update_without_a_connection_is_invalid() {
    let app = TestApp::spawn().await;

    let result = app
        .admin()
        .update_connection(pb::UpdateConnectionRequest {
            connection: None,
            update_mask: None,
        })
        .await;

    assert_invalid(result, &["connection"]);
}

#[tokio::test]
async fn a_refused_update_changes_nothing_stored() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("S")).await;
    let refusals: Vec<(pb::Connection, Vec<&str>, &str)> = vec![
        (
            with_smtp("S", |s| s.port = 0),
            vec!["description", "smtp.port"],
            "connection.smtp.port",
        ),
        (
            with_smtp("S", |s| s.host = "https://x".into()),
            vec!["smtp"],
            "connection.smtp.host",
        ),
        (
            {
                let mut c = smtp_connection("S");
                c.sender = None;
                c
            },
            vec!["sender"],
            "connection.sender.address",
        ),
        (
            with_smtp("S", |s| s.auth = pb::SmtpAuth::Gssapi as i32),
            vec!["smtp.auth"],
            "connection.smtp.auth",
        ),
        (
            with_smtp("S", |s| {
                s.username.clear();
            }),
            vec!["smtp.username"],
            "connection.smtp.username",
        ),
        (
            {
                let mut c = smtp_connection("S");
                c.backend = None;
                c
            },
            vec!["smtp"],
            "connection.backend",
        ),
    ];
    for (mut change, mask, field) in refusals {
        change.description = "must not be stored".into();
        change.is_default = true;
        let mut mask = mask;
        mask.push("is_default");
        assert_invalid(app.update(change, &mask).await, &[field]);
        assert_eq!(app.get_ok("S").await, created, "after refusing {field}");
    }
}

#[tokio::test]
async fn a_refused_create_leaves_the_current_default_alone() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    let a = app.create_ok(a).await;
    let mut bad = with_smtp("B", |s| s.port = 0);
    bad.is_default = true;

    assert_create_refused(&app, bad, &["connection.smtp.port"]).await;

    assert_eq!(app.get_ok("A").await, a);
}

#[tokio::test]
async fn a_refused_update_leaves_the_current_default_alone() {
    let app = TestApp::spawn().await;
    let mut a = smtp_connection("A");
    a.is_default = true;
    let a = app.create_ok(a).await;
    let b = app.create_ok(smtp_connection("B")).await;
    let mut bad = with_smtp("B", |s| s.port = 70000);
    bad.is_default = true;

    assert_invalid(
        app.update(bad, &["is_default", "smtp.port"]).await,
        &["connection.smtp.port"],
    );

    assert_eq!(app.get_ok("A").await, a);
    assert_eq!(app.get_ok("B").await, b);
}

// ---------------------------------------------------------------------------
// Listing

#[tokio::test]
async fn a_negative_page_size_is_refused() {
    let app = TestApp::spawn().await;

    assert_invalid(app.list(-1, "").await, &["page_size"]);
    assert_invalid(app.list(i32::MIN, "").await, &["page_size"]);
}

#[tokio::test]
async fn a_page_token_the_server_did_not_issue_is_refused() {
    let app = TestApp::spawn().await;
    app.create_ok(smtp_connection("S")).await;

    for garbage in ["%%%garbage%%%", "bm90IGEgdG9rZW4", "S"] {
        assert_invalid(app.list(10, garbage).await, &["page_token"]);
    }
}
