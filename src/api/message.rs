//! Parsing `SendRequest.message` into a validated [`OutgoingMessage`], with a
//! field path for every violation and the size limit of the product.

use crate::{
    domain::{
        Attachment, EmailAddress, Mailbox, OutgoingMessage, Priority, Violations,
        check_header_safe, parse_header_name, parse_header_value,
    },
    pb,
};

/// Limits on what `Send` accepts.
#[derive(Debug, Clone)]
pub struct MessageLimits {
    /// Subject, bodies and attachments together, in bytes.
    pub max_message_size: usize,
    /// To, Cc and Bcc together.
    pub max_recipients: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
        }
    }
}

pub enum MessageError {
    Invalid(Violations),
    TooLarge { size: usize, limit: usize },
}

/// The message size as SPEC.md defines it: the raw bytes of subject, bodies
/// and attachments.
pub fn message_size(m: &pb::EmailMessage) -> usize {
    m.subject.len()
        + m.text_body.len()
        + m.html_body.len()
        + m.attachments.iter().map(|a| a.content.len()).sum::<usize>()
}

fn mailboxes(v: &mut Violations, field: &str, list: &[pb::Address]) -> Vec<Mailbox> {
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let address = v.check(
            &format!("{field}[{i}].address"),
            EmailAddress::parse(&a.address),
        );
        let display_name = v.check(
            &format!("{field}[{i}].display_name"),
            Mailbox::parse_display_name(&a.display_name),
        );
        if let (Some(address), Some(display_name)) = (address, display_name) {
            out.push(Mailbox {
                address,
                display_name,
            });
        }
    }
    out
}

fn attachment(v: &mut Violations, field: &str, a: &pb::Attachment) -> Option<Attachment> {
    let mut ok = true;
    if a.filename.is_empty() {
        v.add(format!("{field}.filename"), "is required");
        ok = false;
    } else if let Err(e) = check_header_safe(&a.filename) {
        v.add(format!("{field}.filename"), e);
        ok = false;
    } else if a.filename.contains(['/', '\\']) {
        v.add(
            format!("{field}.filename"),
            "must be a file name, not a path",
        );
        ok = false;
    }
    let content_type = if a.content_type.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        match a
            .content_type
            .parse::<lettre::message::header::ContentType>()
        {
            Ok(_) if check_header_safe(&a.content_type).is_ok() => a.content_type.clone(),
            _ => {
                v.add(
                    format!("{field}.content_type"),
                    format!(
                        "{:?} is not a MIME type such as application/pdf",
                        a.content_type
                    ),
                );
                ok = false;
                String::new()
            }
        }
    };
    let content_id = if a.content_id.is_empty() {
        None
    } else if a
        .content_id
        .chars()
        .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"".contains(c))
    {
        Some(a.content_id.clone())
    } else {
        v.add(
            format!("{field}.content_id"),
            "must be printable ASCII without spaces, angle brackets or specials",
        );
        ok = false;
        None
    };
    ok.then(|| Attachment {
        filename: a.filename.clone(),
        content_type,
        content: a.content.clone(),
        content_id,
    })
}

/// Validates the message of a `Send`. `from` is the connection's sender and
/// `id` the new notification's id.
pub fn parse_message(
    m: &pb::EmailMessage,
    id: String,
    from: Mailbox,
    limits: &MessageLimits,
) -> Result<OutgoingMessage, MessageError> {
    let size = message_size(m);
    if size > limits.max_message_size {
        return Err(MessageError::TooLarge {
            size,
            limit: limits.max_message_size,
        });
    }
    let mut v = Violations::default();
    let to = mailboxes(&mut v, "message.to", &m.to);
    let cc = mailboxes(&mut v, "message.cc", &m.cc);
    let bcc = mailboxes(&mut v, "message.bcc", &m.bcc);
    let reply_to = mailboxes(&mut v, "message.reply_to", &m.reply_to);
    let recipients = m.to.len() + m.cc.len() + m.bcc.len();
    if recipients == 0 {
        v.add(
            "message.to",
            "at least one recipient (to, cc or bcc) is required",
        );
    } else if recipients > limits.max_recipients {
        v.add(
            "message.to",
            format!(
                "{recipients} recipients (to, cc and bcc together) exceed the limit of {}",
                limits.max_recipients
            ),
        );
    }
    if let Err(e) = check_header_safe(&m.subject) {
        v.add("message.subject", e);
    }
    if m.text_body.is_empty() && m.html_body.is_empty() {
        v.add(
            "message.text_body",
            "a text_body or an html_body is required",
        );
    }
    for (field, body) in [
        ("message.text_body", &m.text_body),
        ("message.html_body", &m.html_body),
    ] {
        if body.contains('\0') {
            v.add(field, "must not contain NUL characters");
        }
    }
    let attachments: Vec<Attachment> = m
        .attachments
        .iter()
        .enumerate()
        .filter_map(|(i, a)| attachment(&mut v, &format!("message.attachments[{i}]"), a))
        .collect();
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut names: Vec<&String> = m.headers.keys().collect();
    names.sort();
    for name in names {
        let field = format!("message.headers[{name}]");
        let canonical = v.check(&field, parse_header_name(name));
        let value = v.check(&field, parse_header_value(&m.headers[name]));
        if let (Some(n), Some(val)) = (canonical, value) {
            if headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(&n)) {
                v.add(field, "is given twice (header names are case-insensitive)");
            } else {
                headers.push((n, val));
            }
        }
    }
    let priority = match pb::Priority::try_from(m.priority) {
        Ok(pb::Priority::Unspecified | pb::Priority::Normal) => Priority::Normal,
        Ok(pb::Priority::Low) => Priority::Low,
        Ok(pb::Priority::High) => Priority::High,
        Err(_) => {
            v.add("message.priority", format!("unknown value {}", m.priority));
            Priority::Normal
        }
    };
    if !v.is_empty() {
        return Err(MessageError::Invalid(v));
    }
    let body = |s: &String| (!s.is_empty()).then(|| s.clone());
    Ok(OutgoingMessage {
        id,
        from,
        to,
        cc,
        bcc,
        reply_to,
        subject: m.subject.clone(),
        text_body: body(&m.text_body),
        html_body: body(&m.html_body),
        attachments,
        headers,
        priority,
    })
}
