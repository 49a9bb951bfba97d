//! An e-mail as notigate delivers it: validated recipients, subject, bodies,
//! attachments and allowed headers. Backends turn this into RFC 5322 (SMTP)
//! or an EWS `t:Message`.

use super::{Mailbox, check_header_safe};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Low,
    Normal,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// File name shown to the recipient (any Unicode, no control characters).
    pub filename: String,
    /// A MIME type such as `application/pdf`; `application/octet-stream` when
    /// the client gave none.
    pub content_type: String,
    pub content: Vec<u8>,
    /// Set for inline parts referenced as `cid:<content_id>` from the HTML body.
    pub content_id: Option<String>,
}

/// The custom headers a client may set. Anything else is refused, so that a
/// client cannot override From, Date, Message-ID or MIME structure.
pub const ALLOWED_HEADERS: &[&str] = &[
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "Precedence",
    "In-Reply-To",
    "References",
];

/// Checks a custom header name: `X-*` or one of [`ALLOWED_HEADERS`], case
/// insensitively, as an RFC 5322 field name. Returns the canonical spelling.
pub fn parse_header_name(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!("{name:?} is not a valid header field name"));
    }
    if let Some(known) = ALLOWED_HEADERS
        .iter()
        .find(|h| h.eq_ignore_ascii_case(name))
    {
        return Ok((*known).to_owned());
    }
    if name.len() > 2 && name[..2].eq_ignore_ascii_case("x-") {
        return Ok(name.to_owned());
    }
    Err(format!(
        "header {name:?} is not allowed: use X-* or one of {}",
        ALLOWED_HEADERS.join(", ")
    ))
}

pub fn parse_header_value(value: &str) -> Result<String, String> {
    check_header_safe(value)?;
    Ok(value.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The notification id; also the left part of the Message-ID, so that
    /// every retry carries the same Message-ID and receivers can drop
    /// duplicates.
    pub id: String,
    /// The connection's sender.
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub subject: String,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Allowed custom headers, names canonical, in a stable order.
    pub headers: Vec<(String, String)>,
    pub priority: Priority,
}

impl OutgoingMessage {
    /// Every envelope recipient: To, Cc and Bcc.
    pub fn recipients(&self) -> impl Iterator<Item = &Mailbox> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }

    /// `<id@sender-domain>`.
    pub fn message_id(&self) -> String {
        let domain = self
            .from
            .address
            .as_str()
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("notigate.invalid");
        format!("<{}@{}>", self.id, domain)
    }
}
