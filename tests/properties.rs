//! Property tests (proptest) over the domain parsers, the request → domain
//! parser (`api::parse_message`) and the message builder
//! (`backend::mime::build`): arbitrary Unicode never produces a panic, a
//! malformed message or an injected header, and what a parser accepts
//! round-trips. One test decodes a few hundred built messages with Python's
//! `email` package (an independent parser) and compares every field.
//!
//! `PROPTEST_CASES` raises the number of cases (default 256 per property).

mod common;

use notigate::{
    api::{MessageError, MessageLimits, parse_message},
    backend::mime,
    domain::{
        Attachment, ConnectionName, EmailAddress, ExchangeServer, HostName, Mailbox,
        OutgoingMessage, Priority, check_header_safe, parse_header_name,
    },
    pb,
};
use proptest::{prelude::*, strategy::ValueTree};

// ---------------------------------------------------------------------------
// Strategies

/// Pieces that break naive encoders: line breaks, encoded-word markers,
/// header syntax, Unicode separators, quotes, long runs.
fn nasty_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\r\n".to_string()),
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\r\nBcc: victim@example.com".to_string()),
        Just("=?utf-8?b?SGk=?=".to_string()),
        Just("=?".to_string()),
        Just("?=".to_string()),
        Just(": ".to_string()),
        Just("\u{2028}".to_string()),
        Just("\u{0}".to_string()),
        Just("\t".to_string()),
        Just("\"".to_string()),
        Just("<>".to_string()),
        Just(" ".to_string()),
        Just("Счёт № 42 оплачен".to_string()),
        Just("😀👩‍👩‍👧".to_string()),
        Just("x".repeat(1200)),
        Just(".".to_string()),
        Just("\r\n.\r\n".to_string()),
        any::<String>(),
    ]
}

fn nasty_text() -> impl Strategy<Value = String> {
    prop::collection::vec(nasty_fragment(), 0..6).prop_map(|v| v.concat())
}

/// What validation lets through: the text without the characters it
/// refuses in headers.
fn header_safe_text() -> impl Strategy<Value = String> {
    nasty_text().prop_map(|s| {
        s.chars()
            .filter(|c| check_header_safe(&c.to_string()).is_ok())
            .take(200)
            .collect()
    })
}

fn valid_address() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]{1,12}([.+_-][a-z0-9]{1,8})?",
        "[a-z]{1,10}\\.(com|org|ru)",
    )
        .prop_map(|(local, domain)| format!("{local}@{domain}"))
}

fn address_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => valid_address(),
        1 => nasty_text(),
        1 => (valid_address(), nasty_fragment()).prop_map(|(a, f)| format!("{a}{f}")),
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    (valid_address(), header_safe_text()).prop_map(|(a, name)| Mailbox {
        address: EmailAddress::parse(&a).expect("generated addresses are valid"),
        display_name: name,
    })
}

fn body() -> impl Strategy<Value = Option<String>> {
    prop::option::of(nasty_text().prop_map(|s| s.replace('\0', "")))
}

fn attachment() -> impl Strategy<Value = Attachment> {
    (
        header_safe_text(),
        prop_oneof![
            Just("application/pdf".to_string()),
            Just("image/png".to_string()),
            Just("text/plain; charset=utf-8".to_string()),
        ],
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::option::of("[a-z0-9.]{1,20}@[a-z]{1,8}"),
    )
        .prop_map(|(name, ct, content, cid)| Attachment {
            filename: if name.is_empty() { "f".into() } else { name },
            content_type: ct,
            content,
            content_id: cid,
        })
}

fn custom_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(
        prop_oneof![
            "X-[A-Za-z0-9-]{1,20}",
            Just("List-Unsubscribe".to_string()),
            Just("References".to_string()),
            Just("In-Reply-To".to_string()),
        ],
        header_safe_text(),
        0..4,
    )
    .prop_map(|m| {
        let mut seen = std::collections::HashSet::new();
        m.into_iter()
            .filter(|(k, _)| seen.insert(k.to_ascii_lowercase()))
            .collect()
    })
}

/// A message as validation leaves it, with arbitrary Unicode wherever
/// validation allows it.
fn outgoing() -> impl Strategy<Value = OutgoingMessage> {
    (
        mailbox(),
        prop::collection::vec(mailbox(), 1..4),
        prop::collection::vec(mailbox(), 0..3),
        prop::collection::vec(mailbox(), 0..2),
        prop::collection::vec(mailbox(), 0..2),
        header_safe_text(),
        (body(), body()),
        prop::collection::vec(attachment(), 0..3),
        custom_headers(),
        prop_oneof![
            Just(Priority::Low),
            Just(Priority::Normal),
            Just(Priority::High)
        ],
    )
        .prop_map(
            |(
                from,
                to,
                cc,
                bcc,
                reply_to,
                subject,
                (text, html),
                attachments,
                headers,
                priority,
            )| {
                let text = match (&text, &html) {
                    (None, None) => Some(String::new()),
                    _ => text,
                };
                OutgoingMessage {
                    id: "0190f0e2-7c1a-7000-8000-000000000001".into(),
                    from,
                    to,
                    cc,
                    bcc,
                    reply_to,
                    subject,
                    text_body: text,
                    html_body: html,
                    attachments,
                    headers,
                    priority,
                }
            },
        )
}

fn pb_address() -> impl Strategy<Value = pb::Address> {
    (address_text(), nasty_text()).prop_map(|(address, display_name)| pb::Address {
        address,
        display_name,
    })
}

/// A request message as any client could send it.
fn request_message() -> impl Strategy<Value = pb::EmailMessage> {
    (
        prop::collection::vec(pb_address(), 0..4),
        prop::collection::vec(pb_address(), 0..2),
        prop::collection::vec(pb_address(), 0..2),
        prop::collection::vec(pb_address(), 0..2),
        nasty_text(),
        (nasty_text(), nasty_text()),
        prop::collection::vec(
            (
                nasty_text(),
                prop_oneof![
                    Just(String::new()),
                    Just("application/pdf".to_string()),
                    nasty_text()
                ],
                prop::collection::vec(any::<u8>(), 0..64),
                prop_oneof![Just(String::new()), nasty_text(), "[a-z]{1,8}@x"],
            ),
            0..3,
        ),
        prop::collection::btree_map(
            prop_oneof![
                "X-[A-Za-z0-9-]{1,10}",
                Just("Bcc".to_string()),
                Just("From".to_string()),
                Just("references".to_string()),
                nasty_text()
            ],
            nasty_text(),
            0..4,
        ),
        prop_oneof![0..4i32, any::<i32>()],
    )
        .prop_map(
            |(to, cc, bcc, reply_to, subject, (text_body, html_body), atts, headers, priority)| {
                pb::EmailMessage {
                    to,
                    cc,
                    bcc,
                    reply_to,
                    subject,
                    text_body,
                    html_body,
                    attachments: atts
                        .into_iter()
                        .map(
                            |(filename, content_type, content, content_id)| pb::Attachment {
                                filename,
                                content_type,
                                content,
                                content_id,
                            },
                        )
                        .collect(),
                    headers: headers.into_iter().collect(),
                    priority,
                }
            },
        )
}

fn sender() -> Mailbox {
    Mailbox {
        address: EmailAddress::parse("noreply@example.com").unwrap(),
        display_name: "Уведомления".into(),
    }
}

// ---------------------------------------------------------------------------
// Checks on a built message

/// The header section, unfolded: (name, value) per field.
fn header_fields(formatted: &str) -> Vec<(String, String)> {
    let head = formatted.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().expect("a continuation follows a field");
            last.1.push_str(line);
        } else {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("a header line without a colon: {line:?}"));
            fields.push((name.to_owned(), value.to_owned()));
        }
    }
    fields
}

/// Everything a well-formed, injection-free message must satisfy.
fn check_built(m: &OutgoingMessage, formatted: &[u8]) -> Result<(), TestCaseError> {
    let text = std::str::from_utf8(formatted)
        .map_err(|e| TestCaseError::fail(format!("not UTF-8: {e}")))?;
    prop_assert!(text.is_ascii(), "non-ASCII bytes in the message");
    // CRLF only, and lines within RFC 5322's 998.
    prop_assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
    prop_assert_eq!(text.matches('\r').count(), text.matches("\r\n").count());
    for line in text.split("\r\n") {
        prop_assert!(line.len() <= 998, "a line of {} octets", line.len());
    }
    let fields = header_fields(text);
    let mut expected: Vec<String> = [
        "From",
        "Subject",
        "Message-ID",
        "Date",
        "MIME-Version",
        "Content-Type",
        "To",
        "Cc",
        "Reply-To",
        "Content-Transfer-Encoding",
        "Importance",
        "X-Priority",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.extend(m.headers.iter().map(|(n, _)| n.clone()));
    for (name, _) in &fields {
        prop_assert!(
            expected.iter().any(|e| e.eq_ignore_ascii_case(name)),
            "unexpected header field {:?} (injection?)",
            name
        );
    }
    for once in ["From", "Subject", "Message-ID", "Date", "MIME-Version"] {
        let n = fields
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(once))
            .count();
        prop_assert_eq!(n, 1, "{} appears {} times", once, n);
    }
    prop_assert!(
        !fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("Bcc")),
        "Bcc in the headers"
    );
    let message_id = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Message-ID"))
        .map(|(_, v)| v.trim().to_owned());
    prop_assert_eq!(message_id, Some(m.message_id()));
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn email_address_parse_never_panics_and_round_trips(s in address_text()) {
        if let Ok(a) = EmailAddress::parse(&s) {
            prop_assert_eq!(a.as_str(), s.as_str());
            prop_assert!(check_header_safe(a.as_str()).is_ok());
            prop_assert!(a.as_str().len() <= 254);
            prop_assert!(a.as_str().parse::<lettre::Address>().is_ok());
            prop_assert_eq!(EmailAddress::parse(a.as_str()), Ok(a.clone()));
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<EmailAddress>(&json).unwrap(), a);
        }
    }

    #[test]
    fn connection_names_are_exactly_the_seed_pattern(s in prop_oneof!["[A-Za-z0-9_]{0,70}", nasty_text()]) {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match ConnectionName::parse(&s) {
            Ok(n) => {
                prop_assert!(valid, "{:?} accepted", s);
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert_eq!(ConnectionName::parse(n.as_str()), Ok(n.clone()));
            }
            Err(e) => {
                prop_assert!(!valid, "{:?} refused: {}", s, e);
                prop_assert!(!e.is_empty());
            }
        }
    }

    #[test]
    fn host_names_and_exchange_servers_round_trip(
        s in prop_oneof![
            "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}(:[0-9]{1,6})?(/[A-Za-z0-9./]{0,20})?",
            "\\[?[0-9a-f:]{2,20}\\]?(:[0-9]{1,5})?",
            "(https?://)?[a-z.]{1,20}",
            nasty_text(),
        ]
    ) {
        if let Ok(h) = HostName::parse(&s) {
            prop_assert_eq!(HostName::parse(h.as_str()), Ok(h.clone()));
            prop_assert!(check_header_safe(h.as_str()).is_ok());
        }
        if let Ok(server) = ExchangeServer::parse(&s) {
            let lower = s.to_ascii_lowercase();
            prop_assert!(!lower.starts_with("http") || !s.contains("://"));
            let url = server.url(false);
            prop_assert!(url.starts_with("https://"), "{}", url);
            prop_assert!(!url.contains(char::is_whitespace));
            // The parts make the same server again.
            let host = server.host().as_str();
            let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
            let again = match server.port() {
                Some(p) => format!("{host}:{p}{}", server.path()),
                None => format!("{host}{}", server.path()),
            };
            let reparsed = ExchangeServer::parse(&again)
                .map_err(|e| TestCaseError::fail(format!("{again:?}: {e}")))?;
            prop_assert_eq!(reparsed.url(true), server.url(true));
        }
    }

    #[test]
    fn header_names_accepted_are_safe_field_names(s in prop_oneof!["[A-Za-z0-9-]{1,20}", nasty_text()]) {
        if let Ok(name) = parse_header_name(&s) {
            prop_assert!(name.bytes().all(|b| (33..=126).contains(&b) && b != b':'));
            prop_assert!(name.eq_ignore_ascii_case(&s));
            prop_assert!(
                name.to_ascii_lowercase().starts_with("x-")
                    || notigate::domain::ALLOWED_HEADERS.contains(&name.as_str())
            );
        }
    }

    #[test]
    fn the_builder_makes_well_formed_messages_from_any_valid_input(m in outgoing()) {
        let built = mime::build(&m).map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        check_built(&m, &built.formatted)?;
        let rcpts: Vec<&str> = built.envelope.recipients.iter().map(AsRef::as_ref).collect();
        let want: Vec<&str> = m.recipients().map(|r| r.address.as_str()).collect();
        prop_assert_eq!(rcpts, want);
    }

    #[test]
    fn the_builder_refuses_header_breaking_values_without_panicking(
        mut m in outgoing(),
        evil in prop_oneof![Just("\r\nX-Evil: 1".to_string()), Just("\n".to_string()), Just("\u{2028}".to_string()), Just("\0".to_string())],
        which in 0..5usize,
    ) {
        match which {
            0 => m.subject.push_str(&evil),
            1 => m.from.display_name.push_str(&evil),
            2 => m.to[0].display_name.push_str(&evil),
            3 => m.headers.push(("X-Injected".into(), evil.clone())),
            _ => m.attachments.push(Attachment {
                filename: format!("a{evil}.txt"),
                content_type: "text/plain".into(),
                content: vec![1],
                content_id: None,
            }),
        }
        let refused = matches!(mime::build(&m), Err(mime::BuildError::Header { .. }));
        prop_assert!(refused, "a header-breaking value was not refused");
    }

    #[test]
    fn whatever_send_accepts_can_be_built(m in request_message()) {
        match parse_message(&m, "0190f0e2-7c1a-7000-8000-000000000001".into(), sender(), &MessageLimits::default()) {
            Ok(out) => {
                let built = mime::build(&out)
                    .map_err(|e| TestCaseError::fail(format!("accepted but cannot be built: {e}")))?;
                check_built(&out, &built.formatted)?;
            }
            Err(MessageError::Invalid(v)) => {
                prop_assert!(!v.0.is_empty());
                for f in &v.0 {
                    prop_assert!(f.field.starts_with("message."), "{:?}", f);
                    prop_assert!(!f.description.is_empty());
                }
            }
            Err(MessageError::TooLarge { .. }) => prop_assert!(false, "small messages only"),
        }
    }
}

// ---------------------------------------------------------------------------
// Round trip through an independent parser

/// Builds a few hundred arbitrary valid messages, has Python's `email`
/// package (policy.default: RFC 2047 and RFC 2231 decoded) read them back,
/// and compares subject, names, addresses, custom headers, bodies and
/// attachments with what went in.
#[test]
fn built_messages_read_back_identically_in_python() {
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let cases: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = outgoing();
    let mut messages = Vec::new();
    for _ in 0..cases {
        let m = strategy.new_tree(&mut runner).expect("a value").current();
        let built = mime::build(&m).expect("valid input builds");
        messages.push((m, built.formatted));
    }
    let payload: Vec<String> = messages
        .iter()
        .map(|(_, raw)| String::from_utf8(raw.clone()).expect("ASCII"))
        .collect();
    let script = r#"
import sys, json, email, base64, re
from email import policy
from email.header import decode_header, make_header
from email.utils import getaddresses
# The address and subject headers are decoded with the classic API:
# policy.default's address parser keeps the folding space between adjacent
# encoded words that RFC 2047 section 6.2 says to drop.
def decoded(value):
    return str(make_header(decode_header(re.sub(r"\r?\n(?=[ \t])", "", value))))
out = []
def read(raw):
    m = email.message_from_string(raw, policy=policy.default)
    legacy = email.message_from_string(raw, policy=policy.compat32)
    def boxes(name):
        values = legacy.get_all(name) or []
        return [[decoded(n), a] for n, a in getaddresses(values)]
    texts, htmls, atts = [], [], []
    for part in m.walk():
        if part.is_multipart():
            continue
        disp = part.get_content_disposition()
        ct = part.get_content_type()
        if disp in ("attachment", "inline") and not (ct in ("text/plain", "text/html") and part.get_filename() is None):
            atts.append([part.get_filename(), base64.b64encode(part.get_payload(decode=True) or b"").decode()])
        elif ct == "text/plain":
            texts.append(part.get_content())
        elif ct == "text/html":
            htmls.append(part.get_content())
    return {
        "subject": decoded(legacy["subject"] or ""),
        "from": boxes("from"), "to": boxes("to"), "cc": boxes("cc"), "reply_to": boxes("reply-to"),
        "headers": {k: str(v) for k, v in m.items()},
        "texts": texts, "htmls": htmls, "attachments": atts,
        "defects": [str(d) for d in m.defects] + [str(d) for p in m.walk() for d in p.defects],
    }
for raw in json.load(sys.stdin):
    try:
        out.append(read(raw))
    except Exception as e:
        out.append({"error": repr(e)})
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&payload).unwrap().as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().expect("python output");
    assert!(output.status.success(), "the Python parser failed");
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    let mut failures = Vec::new();
    for ((m, raw), p) in messages.iter().zip(&parsed) {
        let mut problems = Vec::new();
        if let Some(e) = p["error"].as_str() {
            problems.push(format!("Python cannot read it: {e}"));
        }
        let boxes = |list: &[Mailbox]| -> serde_json::Value {
            list.iter()
                .map(|b| {
                    let name = if b.display_name.trim().is_empty() {
                        ""
                    } else {
                        b.display_name.as_str()
                    };
                    serde_json::json!([name, b.address.as_str()])
                })
                .collect()
        };
        if p["subject"].as_str().unwrap_or_default() != m.subject {
            problems.push(format!("subject {:?} read as {}", m.subject, p["subject"]));
        }
        for (key, list) in [
            ("from", std::slice::from_ref(&m.from)),
            ("to", &m.to[..]),
            ("cc", &m.cc[..]),
            ("reply_to", &m.reply_to[..]),
        ] {
            if p[key] != boxes(list) {
                problems.push(format!("{key} {} read as {}", boxes(list), p[key]));
            }
        }
        for (name, value) in &m.headers {
            let got = p["headers"][name.as_str()].as_str();
            if got != Some(value.as_str()) {
                problems.push(format!("header {name}: {value:?} read as {got:?}"));
            }
        }
        let norm = |s: &str| s.replace("\r\n", "\n").replace('\r', "\n");
        let norm_opt = |s: Option<&str>| s.map(norm);
        let text = p["texts"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t.as_str());
        if let Some(want) = &m.text_body
            && norm_opt(text).as_deref().map(|t| t.trim_end_matches('\n'))
                != Some(norm(want).trim_end_matches('\n'))
        {
            problems.push(format!("text body {want:?} read as {text:?}"));
        }
        let html = p["htmls"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t.as_str());
        if let Some(want) = &m.html_body
            && norm_opt(html).as_deref().map(|t| t.trim_end_matches('\n'))
                != Some(norm(want).trim_end_matches('\n'))
        {
            problems.push(format!("html body {want:?} read as {html:?}"));
        }
        let got_atts = p["attachments"].as_array().cloned().unwrap_or_default();
        if got_atts.len() != m.attachments.len() {
            problems.push(format!(
                "{} attachments read as {}",
                m.attachments.len(),
                got_atts.len()
            ));
        }
        if let Ok(path) = std::env::var("PROPERTIES_DUMP") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            for p in &problems {
                writeln!(f, "{p}").unwrap();
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}\n--- message ---\n{}",
                problems.join("\n"),
                String::from_utf8_lossy(raw)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} messages did not read back:\n{}",
        failures.len(),
        messages.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
}
