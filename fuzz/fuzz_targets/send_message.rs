//! The path every `Send` takes, from untrusted bytes to the RFC 5322 message
//! an SMTP server receives: protobuf `EmailMessage` → `api::parse_message`
//! (validation into the domain) → `backend::mime::build`. Whatever the
//! input, nothing panics; whatever validation accepts can be built; and the
//! built message is well formed: CRLF line ends only, no line over 998
//! octets, exactly the expected header fields (no injected one, no Bcc).
//!
//! The first input byte picks how the rest is read: as protobuf bytes (the
//! wire path, decoder included) or as a structure built field by field
//! (reaches deep validation faster).

#![no_main]

use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use notigate::{
    api::{MessageError, MessageLimits, parse_message},
    backend::mime,
    domain::{ConnectionName, EmailAddress, ExchangeServer, HostName, Mailbox, parse_header_name},
    pb,
};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let message = if mode % 2 == 0 {
        match pb::EmailMessage::decode(rest) {
            Ok(m) => m,
            Err(_) => return,
        }
    } else {
        match structured(&mut Unstructured::new(rest)) {
            Some(m) => m,
            None => return,
        }
    };
    check_parsers(&message);
    check_send_path(&message);
});

fn text(u: &mut Unstructured) -> Option<String> {
    u.arbitrary().ok()
}

fn address(u: &mut Unstructured) -> Option<pb::Address> {
    Some(pb::Address {
        address: text(u)?,
        display_name: text(u)?,
    })
}

fn addresses(u: &mut Unstructured) -> Option<Vec<pb::Address>> {
    let n = u.int_in_range(0..=4u8).ok()?;
    (0..n).map(|_| address(u)).collect()
}

fn structured(u: &mut Unstructured) -> Option<pb::EmailMessage> {
    let mut m = pb::EmailMessage {
        to: addresses(u)?,
        cc: addresses(u)?,
        bcc: addresses(u)?,
        reply_to: addresses(u)?,
        subject: text(u)?,
        text_body: text(u)?,
        html_body: text(u)?,
        priority: u.arbitrary().ok()?,
        ..Default::default()
    };
    for _ in 0..u.int_in_range(0..=3u8).ok()? {
        m.attachments.push(pb::Attachment {
            filename: text(u)?,
            content_type: text(u)?,
            content: u.arbitrary().ok()?,
            content_id: text(u)?,
        });
    }
    for _ in 0..u.int_in_range(0..=3u8).ok()? {
        m.headers.insert(text(u)?, text(u)?);
    }
    Some(m)
}

/// The domain parsers on every string of the message: no panic, and what
/// they accept parses again to the same value.
fn check_parsers(m: &pb::EmailMessage) {
    let strings =
        m.to.iter()
            .chain(&m.cc)
            .flat_map(|a| [&a.address, &a.display_name])
            .chain([&m.subject])
            .chain(m.headers.keys());
    for s in strings {
        if let Ok(a) = EmailAddress::parse(s) {
            assert_eq!(EmailAddress::parse(a.as_str()).as_ref(), Ok(&a));
        }
        if let Ok(h) = HostName::parse(s) {
            assert_eq!(HostName::parse(h.as_str()).as_ref(), Ok(&h));
        }
        if let Ok(n) = ConnectionName::parse(s) {
            assert_eq!(n.as_str(), s);
        }
        if let Ok(server) = ExchangeServer::parse(s) {
            assert!(server.url(false).starts_with("https://"));
        }
        if let Ok(name) = parse_header_name(s) {
            assert!(name.bytes().all(|b| (33..=126).contains(&b) && b != b':'));
        }
    }
}

fn check_send_path(m: &pb::EmailMessage) {
    let from = Mailbox {
        address: EmailAddress::parse("noreply@example.com").expect("valid"),
        display_name: "Уведомления".into(),
    };
    let limits = MessageLimits {
        max_message_size: 1024 * 1024,
        max_recipients: 100,
    };
    let id = "0190f0e2-7c1a-7000-8000-000000000001".to_string();
    let out = match parse_message(m, id, from, &limits) {
        Ok(out) => out,
        Err(MessageError::Invalid(v)) => {
            assert!(!v.0.is_empty());
            for f in &v.0 {
                assert!(f.field.starts_with("message."), "{f:?}");
            }
            return;
        }
        Err(MessageError::TooLarge { .. }) => return,
    };
    let built = match mime::build(&out) {
        Ok(b) => b,
        Err(e) => panic!("Send accepted a message the builder refuses: {e}"),
    };
    let raw = &built.formatted;
    let crlf = raw.windows(2).filter(|w| w == b"\r\n").count();
    assert_eq!(raw.iter().filter(|b| **b == b'\n').count(), crlf, "bare LF");
    assert_eq!(raw.iter().filter(|b| **b == b'\r').count(), crlf, "bare CR");
    for line in raw.split(|b| *b == b'\n') {
        assert!(line.len() <= 999, "a line of {} octets", line.len());
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let allowed = [
        "From",
        "To",
        "Cc",
        "Reply-To",
        "Subject",
        "Message-ID",
        "Date",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Importance",
        "X-Priority",
    ];
    let mut singles = std::collections::HashMap::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let name = line.split(':').next().unwrap_or_default();
        assert!(
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
                || out
                    .headers
                    .iter()
                    .any(|(h, _)| h.eq_ignore_ascii_case(name)),
            "unexpected header field {name:?}"
        );
        *singles.entry(name.to_ascii_lowercase()).or_insert(0) += 1;
    }
    for once in ["from", "subject", "message-id", "date", "mime-version"] {
        assert_eq!(singles.get(once), Some(&1), "{once}");
    }
    let recipients: Vec<&str> = built
        .envelope
        .recipients
        .iter()
        .map(AsRef::as_ref)
        .collect();
    let wanted: Vec<&str> = out.recipients().map(|r| r.address.as_str()).collect();
    assert_eq!(recipients, wanted);
}
