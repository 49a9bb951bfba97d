//! Turns an [`OutgoingMessage`] into the RFC 5322 bytes an SMTP server
//! receives, plus the SMTP envelope. One builder, on top of lettre's
//! `Message` builder, so that encoding rules (RFC 2047 encoded words for
//! non-ASCII names and subjects, RFC 2231 file names, quoted-printable or
//! base64 bodies that keep every line under 998 octets) live in one place.
//!
//! MIME structure, outermost first (each level only when needed):
//!
//! ```text
//! multipart/mixed            regular attachments
//!   multipart/alternative    text and HTML
//!     text/plain
//!     multipart/related      HTML with its inline parts (cid:)
//!       text/html
//!       inline parts...
//!   attachments...
//! ```
//!
//! Inline parts (`content_id` set) belong to the HTML body; a message without
//! HTML has nothing that could reference them, so they are sent as ordinary
//! attachments then.

use std::time::SystemTime;

use lettre::message::{
    Attachment as LettreAttachment, MultiPart, SinglePart,
    header::{ContentType, HeaderName, HeaderValue},
};

use crate::domain::{Attachment, Mailbox, OutgoingMessage, Priority, check_header_safe};

/// Why a message could not be turned into MIME. Retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{field} address {address:?} cannot be used in SMTP: {reason}")]
    Address {
        field: &'static str,
        address: String,
        reason: String,
    },
    #[error("header {name:?} cannot be written: {reason}")]
    Header { name: String, reason: String },
    #[error("the message cannot be built: {0}")]
    Message(String),
}

/// Who the server is asked to deliver to: MAIL FROM and one RCPT TO each.
/// Bcc recipients are here and nowhere in the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: lettre::Address,
    pub recipients: Vec<lettre::Address>,
}

impl Envelope {
    /// Whether any address needs the SMTPUTF8 extension (RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        std::iter::once(&self.from)
            .chain(&self.recipients)
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii())
    }
}

/// A message ready for DATA.
#[derive(Debug, Clone)]
pub struct BuiltMessage {
    pub envelope: Envelope,
    /// The RFC 5322 message, CRLF line ends, without SMTP dot-stuffing
    /// (the SMTP client adds that).
    pub formatted: Vec<u8>,
}

/// Builds the RFC 5322 message and its envelope.
pub fn build(message: &OutgoingMessage) -> Result<BuiltMessage, BuildError> {
    let from = address("from", &message.from)?;
    header_safe("Subject", &message.subject)?;
    for a in &message.attachments {
        header_safe("attachment filename", &a.filename)?;
        header_safe(
            "attachment content_id",
            a.content_id.as_deref().unwrap_or(""),
        )?;
        header_safe("attachment content_type", &a.content_type)?;
    }
    // Subject and address headers are encoded here rather than by lettre,
    // which writes ASCII text as it is: a subject or display name holding a
    // literal "=?utf-8?b?...?=" then shows the recipient other words than
    // the sender wrote, and a display name such as "." or ".a" is not a
    // valid phrase (parsers reject the whole header).
    let mut builder = lettre::Message::builder()
        .message_id(Some(message.message_id()))
        .date(SystemTime::now())
        .raw_header(address_header(
            "From",
            "from",
            std::slice::from_ref(&message.from),
        )?)
        .raw_header(subject_header(&message.subject));
    for (name, field, list) in [
        ("To", "to", &message.to),
        ("Cc", "cc", &message.cc),
        ("Reply-To", "reply_to", &message.reply_to),
    ] {
        if !list.is_empty() {
            builder = builder.raw_header(address_header(name, field, list)?);
        }
    }

    // lettre would derive the envelope from To/Cc/Bcc headers; giving it
    // explicitly keeps Bcc out of the headers entirely (not added, then
    // dropped) and keeps the recipient order stable.
    let recipients = message
        .recipients()
        .map(|m| address("recipient", m))
        .collect::<Result<Vec<_>, _>>()?;
    let lettre_envelope = lettre::address::Envelope::new(Some(from.clone()), recipients.clone())
        .map_err(|e| BuildError::Message(e.to_string()))?;
    builder = builder.envelope(lettre_envelope);

    for (name, value) in priority_headers(message.priority)
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .chain(message.headers.iter().cloned())
    {
        header_safe(&name, &value)?;
        let header_name =
            HeaderName::new_from_ascii(name.clone()).map_err(|e| BuildError::Header {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        builder = builder.raw_header(text_header(header_name, value));
    }

    let email = match body(message)? {
        Body::Single(part) => builder.singlepart(part),
        Body::Multi(part) => builder.multipart(part),
    }
    .map_err(|e| BuildError::Message(e.to_string()))?;
    Ok(BuiltMessage {
        envelope: Envelope { from, recipients },
        formatted: email.formatted(),
    })
}

/// The conventional pair that Outlook (Importance) and older clients
/// (X-Priority) read. Normal priority is the default and gets no header.
fn priority_headers(priority: Priority) -> Vec<(&'static str, &'static str)> {
    match priority {
        Priority::High => vec![("Importance", "high"), ("X-Priority", "1")],
        Priority::Low => vec![("Importance", "low"), ("X-Priority", "5")],
        Priority::Normal => Vec::new(),
    }
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

fn body(message: &OutgoingMessage) -> Result<Body, BuildError> {
    let (inline, regular): (Vec<&Attachment>, Vec<&Attachment>) = message
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some() && message.html_body.is_some());

    // Strings get lettre's automatic transfer encoding: 7bit when short
    // ASCII lines allow it, else quoted-printable or base64.
    let html = match &message.html_body {
        Some(html) if inline.is_empty() => {
            Some(Body::Single(SinglePart::html(unix_newlines(html))))
        }
        Some(html) => {
            let mut related =
                MultiPart::related().singlepart(SinglePart::html(unix_newlines(html)));
            for a in &inline {
                related = related.singlepart(attachment_part(a));
            }
            Some(Body::Multi(related))
        }
        None => None,
    };
    let text = message
        .text_body
        .as_ref()
        .map(|t| SinglePart::plain(unix_newlines(t)));

    let main = match (text, html) {
        (Some(text), Some(html)) => {
            let alternative = MultiPart::alternative().singlepart(text);
            Body::Multi(match html {
                Body::Single(part) => alternative.singlepart(part),
                Body::Multi(part) => alternative.multipart(part),
            })
        }
        (Some(text), None) => Body::Single(text),
        (None, Some(html)) => html,
        // Validated upstream (at least one body); an empty text part keeps
        // the builder total rather than panicking on a broken invariant.
        (None, None) => Body::Single(SinglePart::plain(String::new())),
    };

    if regular.is_empty() {
        return Ok(main);
    }
    let mut mixed = match main {
        Body::Single(part) => MultiPart::mixed().singlepart(part),
        Body::Multi(part) => MultiPart::mixed().multipart(part),
    };
    for a in regular {
        mixed = mixed.singlepart(attachment_part(a));
    }
    Ok(Body::Multi(mixed))
}

/// Turns CRLF and lone CR into LF; lettre then writes every LF as CRLF.
/// A bare CR would otherwise reach the server, which RFC 5321 forbids and
/// some servers refuse (SMTP smuggling protection).
fn unix_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

fn attachment_part(a: &Attachment) -> SinglePart {
    // The type was given by a client; one lettre cannot parse must not make
    // the message undeliverable.
    let content_type = ContentType::parse(&a.content_type)
        .or_else(|_| ContentType::parse("application/octet-stream"));
    let content_type = match content_type {
        Ok(ct) => ct,
        Err(_) => ContentType::TEXT_PLAIN,
    };
    // Vec<u8> bodies are always base64: binary-safe and line-length-safe.
    let content = a.content.clone();
    match &a.content_id {
        Some(cid) if !a.filename.is_empty() => {
            LettreAttachment::new_inline_with_name(cid.clone(), a.filename.clone())
                .body(content, content_type)
        }
        Some(cid) => LettreAttachment::new_inline(cid.clone()).body(content, content_type),
        None => LettreAttachment::new(a.filename.clone()).body(content, content_type),
    }
}

/// Upstream validation already refuses control characters; checking again
/// here keeps the builder total (lettre panics on a CR in a display name)
/// and makes header injection impossible whatever the caller passed.
fn header_safe(name: &str, value: &str) -> Result<(), BuildError> {
    check_header_safe(value).map_err(|reason| BuildError::Header {
        name: name.to_owned(),
        reason,
    })
}

fn address(field: &'static str, m: &Mailbox) -> Result<lettre::Address, BuildError> {
    m.address
        .as_str()
        .parse::<lettre::Address>()
        .map_err(|e| BuildError::Address {
            field,
            address: m.address.as_str().to_owned(),
            reason: e.to_string(),
        })
}

/// Whether a display name can be written as it is: words of ASCII letters,
/// digits, `-` and `_` (all atext) separated by single spaces.
fn plain_phrase(s: &str) -> bool {
    !s.starts_with(' ')
        && !s.ends_with(' ')
        && !s.contains("  ")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'-' | b'_'))
}

/// Whether a subject can be written as it is: printable ASCII without an
/// encoded-word opener, without whitespace at either end (which readers
/// drop), and without a run longer than a line (lettre folds only at
/// spaces; a longer run would make a line over RFC 5322's 998 octets, which
/// servers refuse).
fn plain_text(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !s.contains("=?")
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && s.split(' ').all(|word| word.len() <= 76)
}

/// `s` as RFC 2047 encoded words (UTF-8, base64), one per folded line, each
/// at most 45 bytes of text (72 characters encoded).
fn encoded_words(s: &str) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let mut words = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = rest.len().min(45);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        words.push(format!("=?utf-8?b?{}?=", STANDARD.encode(&rest[..end])));
        rest = &rest[end..];
    }
    words.join("\r\n ")
}

fn subject_header(subject: &str) -> HeaderValue {
    text_header(
        HeaderName::new_from_ascii_str("Subject"),
        subject.to_owned(),
    )
}

/// An unstructured header: as it is when that reads back the same (lettre
/// folds long ASCII text at its spaces), else encoded words — never a line
/// break of the value's own, so a value cannot start a header line.
fn text_header(name: HeaderName, value: String) -> HeaderValue {
    if plain_text(&value) {
        return HeaderValue::new(name, value);
    }
    let encoded = encoded_words(&value);
    HeaderValue::dangerous_new_pre_encoded(name, value, encoded)
}

/// An address-list header (From, To, Cc, Reply-To), one mailbox per folded
/// line. lettre parses the raw value (bare addresses) when it checks for
/// From; the encoded value is what is written.
fn address_header(
    name: &'static str,
    field: &'static str,
    list: &[Mailbox],
) -> Result<HeaderValue, BuildError> {
    let mut raw = Vec::new();
    let mut encoded = Vec::new();
    for m in list {
        header_safe(field, &m.display_name)?;
        let addr = address(field, m)?;
        let addr: &str = addr.as_ref();
        let display = m.display_name.as_str();
        encoded.push(if display.trim().is_empty() {
            addr.to_owned()
        } else if plain_phrase(display) {
            format!("{display} <{addr}>")
        } else {
            format!("{} <{addr}>", encoded_words(display))
        });
        raw.push(addr.to_owned());
    }
    Ok(HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str(name),
        raw.join(", "),
        encoded.join(",\r\n "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EmailAddress;

    fn mbox(address: &str, name: &str) -> Mailbox {
        Mailbox {
            address: EmailAddress::parse(address).unwrap(),
            display_name: name.to_owned(),
        }
    }

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            id: "0190f0e2-7c1a-7000-8000-000000000001".into(),
            from: mbox("noreply@example.com", "Notifier"),
            to: vec![mbox("alice@example.com", "Alice")],
            cc: vec![],
            bcc: vec![],
            reply_to: vec![],
            subject: "Hello".into(),
            text_body: Some("Hello, Alice.".into()),
            html_body: None,
            attachments: vec![],
            headers: vec![],
            priority: Priority::Normal,
        }
    }

    fn built(m: &OutgoingMessage) -> String {
        let b = build(m).unwrap();
        String::from_utf8(b.formatted).unwrap()
    }

    fn headers_of(text: &str) -> &str {
        text.split("\r\n\r\n").next().unwrap()
    }

    fn attachment(name: &str, cid: Option<&str>) -> Attachment {
        Attachment {
            filename: name.into(),
            content_type: "image/png".into(),
            content: vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3],
            content_id: cid.map(Into::into),
        }
    }

    #[test]
    fn text_only_is_a_single_text_plain_part() {
        let text = built(&message());
        let headers = headers_of(&text);
        assert!(
            headers.contains("Content-Type: text/plain; charset=utf-8"),
            "{text}"
        );
        assert!(!text.contains("multipart/"), "{text}");
        assert!(headers.contains("From: Notifier <noreply@example.com>"));
        assert!(headers.contains("To: Alice <alice@example.com>"));
        assert!(headers.contains("Subject: Hello"));
        assert!(headers.contains("Date: "));
        assert!(headers.contains("MIME-Version: 1.0"));
        assert!(headers.contains("Message-ID: <0190f0e2-7c1a-7000-8000-000000000001@example.com>"));
        assert!(text.ends_with("Hello, Alice.\r\n") || text.contains("Hello, Alice."));
    }

    #[test]
    fn html_only_is_a_single_text_html_part() {
        let mut m = message();
        m.text_body = None;
        m.html_body = Some("<p>Hi</p>".into());
        let text = built(&m);
        assert!(headers_of(&text).contains("Content-Type: text/html; charset=utf-8"));
        assert!(!text.contains("multipart/"));
    }

    #[test]
    fn text_and_html_are_alternatives_text_first() {
        let mut m = message();
        m.html_body = Some("<p>Hi</p>".into());
        let text = built(&m);
        assert!(headers_of(&text).contains("multipart/alternative"));
        let plain = text.find("Content-Type: text/plain").unwrap();
        let html = text.find("Content-Type: text/html").unwrap();
        assert!(plain < html, "the preferred (richest) part comes last");
        assert!(!text.contains("multipart/mixed"));
    }

    #[test]
    fn attachments_make_the_message_mixed() {
        let mut m = message();
        m.html_body = Some("<p>Hi</p>".into());
        m.attachments = vec![attachment("report.png", None)];
        let text = built(&m);
        assert!(headers_of(&text).contains("multipart/mixed"));
        let alternative = text.find("multipart/alternative").unwrap();
        let disposition = text
            .find("Content-Disposition: attachment; filename=\"report.png\"")
            .unwrap();
        assert!(alternative < disposition);
        assert!(text.contains("Content-Transfer-Encoding: base64"));
    }

    #[test]
    fn inline_parts_are_related_to_the_html() {
        let mut m = message();
        m.html_body = Some("<img src=\"cid:logo\">".into());
        m.attachments = vec![
            attachment("logo.png", Some("logo")),
            attachment("report.png", None),
        ];
        let text = built(&m);
        let mixed = text.find("multipart/mixed").unwrap();
        let alternative = text.find("multipart/alternative").unwrap();
        let related = text.find("multipart/related").unwrap();
        let html = text.find("Content-Type: text/html").unwrap();
        let cid = text.find("Content-ID: <logo>").unwrap();
        assert!(mixed < alternative && alternative < related && related < html && html < cid);
        assert!(text.contains("Content-Disposition: inline; filename=\"logo.png\""));
        assert!(text.contains("Content-Disposition: attachment; filename=\"report.png\""));
    }

    #[test]
    fn inline_parts_without_html_become_attachments() {
        let mut m = message();
        m.attachments = vec![attachment("logo.png", Some("logo"))];
        let text = built(&m);
        assert!(!text.contains("multipart/related"));
        assert!(text.contains("multipart/mixed"));
    }

    #[test]
    fn cyrillic_subject_and_names_are_encoded_words() {
        let mut m = message();
        m.from = mbox("noreply@example.com", "Служба уведомлений");
        m.to = vec![mbox("ivan@example.com", "Иван Петров")];
        m.subject = "Счёт № 42 оплачен".into();
        let text = built(&m);
        assert!(text.is_ascii(), "{text}");
        let headers = headers_of(&text);
        for name in ["From", "To", "Subject"] {
            let line = headers
                .lines()
                .find(|l| l.starts_with(&format!("{name}: ")))
                .unwrap();
            assert!(line.contains("=?utf-8?b?"), "{line}");
        }
    }

    #[test]
    fn non_ascii_attachment_names_are_rfc2231_encoded() {
        let mut m = message();
        m.attachments = vec![attachment("отчёт.pdf", None)];
        let text = built(&m);
        assert!(text.is_ascii());
        assert!(
            text.contains("utf-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.pdf"),
            "{text}"
        );
    }

    #[test]
    fn bcc_is_in_the_envelope_only() {
        let mut m = message();
        m.cc = vec![mbox("carol@example.com", "")];
        m.bcc = vec![mbox("hidden@example.com", "Hidden")];
        let b = build(&m).unwrap();
        let text = String::from_utf8(b.formatted).unwrap();
        assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
        assert!(!text.contains("hidden@example.com"));
        let rcpts: Vec<&str> = b
            .envelope
            .recipients
            .iter()
            .map(AsRef::<str>::as_ref)
            .collect();
        assert_eq!(
            rcpts,
            [
                "alice@example.com",
                "carol@example.com",
                "hidden@example.com"
            ]
        );
        assert_eq!(
            AsRef::<str>::as_ref(&b.envelope.from),
            "noreply@example.com"
        );
        assert!(headers_of(&text).contains("Cc: carol@example.com"));
    }

    #[test]
    fn reply_to_custom_headers_and_priority_are_written() {
        let mut m = message();
        m.reply_to = vec![mbox("support@example.com", "Support")];
        m.headers = vec![
            (
                "List-Unsubscribe".into(),
                "<mailto:unsub@example.com>".into(),
            ),
            ("X-Campaign".into(), "spring".into()),
        ];
        m.priority = Priority::High;
        let text = built(&m);
        let headers = headers_of(&text);
        assert!(headers.contains("Reply-To: Support <support@example.com>"));
        assert!(headers.contains("List-Unsubscribe: <mailto:unsub@example.com>"));
        assert!(headers.contains("X-Campaign: spring"));
        assert!(headers.contains("Importance: high"));
        assert!(headers.contains("X-Priority: 1"));

        m.priority = Priority::Low;
        let text = built(&m);
        assert!(headers_of(&text).contains("Importance: low"));
        assert!(headers_of(&text).contains("X-Priority: 5"));

        m.priority = Priority::Normal;
        let text = built(&m);
        assert!(!headers_of(&text).contains("Importance"));
        assert!(!headers_of(&text).contains("X-Priority"));
    }

    #[test]
    fn header_injection_is_refused_not_written() {
        // Validation upstream already refuses these; the builder must still
        // never let a value start a header line of its own (nor panic).
        let injections: [fn(&mut OutgoingMessage); 5] = [
            |m| m.subject = "s\r\nBcc: evil@example.com".into(),
            |m| m.headers = vec![("X-Test".into(), "a\r\nX-Evil: 1".into())],
            |m| m.to[0].display_name = "A\r\nX-Evil: 1".into(),
            |m| m.from.display_name = "A\nX-Evil: 1".into(),
            |m| m.attachments = vec![attachment("a\r\nX-Evil: 1", None)],
        ];
        for inject in injections {
            let mut m = message();
            inject(&mut m);
            assert!(matches!(build(&m), Err(BuildError::Header { .. })), "{m:?}");
        }
    }

    #[test]
    fn every_line_ends_in_crlf() {
        let mut m = message();
        m.text_body = Some("one\ntwo\rthree\r\nfour".into());
        m.html_body = Some("<p>\nx</p>".into());
        m.attachments = vec![attachment("a.png", None)];
        let text = built(&m);
        assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
        assert_eq!(text.matches('\r').count(), text.matches("\r\n").count());
    }

    #[test]
    fn long_unbroken_subjects_and_values_are_folded() {
        let mut m = message();
        m.subject = "x".repeat(1200);
        m.headers = vec![("X-Long".into(), "y".repeat(1500))];
        let text = built(&m);
        assert!(
            text.split("\r\n").all(|l| l.len() <= 998),
            "a line is too long"
        );
        assert!(headers_of(&text).contains("Subject: =?utf-8?b?"));
    }

    #[test]
    fn long_lines_stay_under_the_smtp_limit() {
        let mut m = message();
        m.text_body = Some("x".repeat(5000));
        m.html_body = Some(format!("<p>{}</p>", "я".repeat(3000)));
        m.subject = "тема ".repeat(100);
        m.headers = vec![("References".into(), "<a@b> ".repeat(200))];
        let text = built(&m);
        assert!(
            text.split("\r\n").all(|l| l.len() <= 998),
            "a line is too long"
        );
    }
}
