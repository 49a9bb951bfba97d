//! `notigate send` and `notigate status`: the Notifier calls.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
};

use clap::{ArgGroup, Args};
use tokio_stream::StreamExt;

use super::{CliError, Client, ClientArgs, Outcome, json, print_json, table, values};
use crate::pb::{self, NotificationState};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("body").required(true).multiple(true)))]
pub struct SendArgs {
    /// Connection to send through [default: the default connection].
    #[arg(long, value_name = "NAME")]
    pub connection: Option<String>,
    /// Recipients: `addr@example.com` or `Name <addr@example.com>`,
    /// comma-separated or repeated.
    #[arg(long, value_name = "ADDR", required = true)]
    pub to: Vec<String>,
    /// Copy recipients.
    #[arg(long, value_name = "ADDR")]
    pub cc: Vec<String>,
    /// Blind copy recipients.
    #[arg(long, value_name = "ADDR")]
    pub bcc: Vec<String>,
    /// Reply-To addresses.
    #[arg(long, value_name = "ADDR")]
    pub reply_to: Vec<String>,
    /// Subject line (any Unicode).
    #[arg(long, value_name = "TEXT")]
    pub subject: String,
    /// Plain-text body.
    #[arg(
        long,
        value_name = "TEXT",
        group = "body",
        conflicts_with = "text_file"
    )]
    pub text: Option<String>,
    /// Plain-text body from a UTF-8 file (`-`: standard input).
    #[arg(long, value_name = "FILE", group = "body")]
    pub text_file: Option<PathBuf>,
    /// HTML body from a UTF-8 file (`-`: standard input).
    #[arg(long, value_name = "FILE", group = "body")]
    pub html_file: Option<PathBuf>,
    /// Attach a file, optionally with its MIME type (`report.pdf:application/pdf`;
    /// otherwise guessed from the extension). Repeatable.
    #[arg(long, value_name = "FILE[:TYPE]")]
    pub attach: Vec<String>,
    /// Extra header, `'X-Foo: bar'` (X-*, List-Unsubscribe,
    /// List-Unsubscribe-Post, Auto-Submitted, Precedence, In-Reply-To,
    /// References). Repeatable.
    #[arg(long, value_name = "'NAME: VALUE'")]
    pub header: Vec<String>,
    #[arg(long, value_enum)]
    pub priority: Option<values::Priority>,
    /// The same key within the retention window returns the first
    /// notification and sends nothing new.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Answer at the final state (or after about a minute with the current
    /// one); exit code 1 when it is FAILED or CANCELED.
    #[arg(long)]
    pub wait: bool,
    // Last: its help heading would otherwise carry over to the flags after it.
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Notification id, as `send` printed it.
    pub id: String,
    /// Print every state change until the final one; exit code 0 when
    /// DELIVERED, 1 when FAILED or CANCELED. With --json, one object per
    /// line.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn send(args: SendArgs) -> Result<Outcome, CliError> {
    let message = build_message(&args)?;
    let client = Client::connect(&args.client).await?;
    let request = pb::SendRequest {
        connection: args.connection.clone().unwrap_or_default(),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        message: Some(message),
        wait_for_delivery: args.wait,
    };
    let response = client
        .notifier()
        .send(client.request(request))
        .await?
        .into_inner();
    let ended_badly = matches!(
        NotificationState::try_from(response.state),
        Ok(NotificationState::Failed | NotificationState::Canceled)
    );
    if args.client.json {
        print_json(&json::send_response(&response));
    } else {
        let mut kv = table::KeyValues::default();
        kv.add("id", response.id.clone())
            .add("state", values::state(response.state));
        if ended_badly {
            // The reason is worth the second call.
            let n = client
                .notifier()
                .get_notification(client.request(pb::GetNotificationRequest {
                    id: response.id.clone(),
                }))
                .await?
                .into_inner();
            kv.add("last_error", n.last_error);
        }
        print!("{}", kv.render());
    }
    Ok(if ended_badly {
        Outcome::NotOk
    } else {
        Outcome::Success
    })
}

pub async fn status(args: StatusArgs) -> Result<Outcome, CliError> {
    let client = Client::connect(&args.client).await?;
    let json = args.client.json;
    if !args.watch {
        let n = client
            .notifier()
            .get_notification(client.request(pb::GetNotificationRequest { id: args.id }))
            .await?
            .into_inner();
        if json {
            print_json(&json::notification(&n));
        } else {
            print!("{}", describe(&n));
        }
        return Ok(Outcome::Success);
    }
    let mut stream = client
        .notifier()
        .watch_notification(client.request(pb::WatchNotificationRequest {
            id: args.id.clone(),
        }))
        .await?
        .into_inner();
    while let Some(n) = stream.next().await {
        let n = n?;
        if json {
            println!("{}", json::notification(&n));
        } else {
            println!("{}", watch_line(&n));
        }
        match NotificationState::try_from(n.state) {
            Ok(NotificationState::Delivered) => return Ok(Outcome::Success),
            Ok(NotificationState::Failed | NotificationState::Canceled) => {
                return Ok(Outcome::NotOk);
            }
            _ => {}
        }
    }
    Err(CliError::input(format!(
        "the server ended the watch of {} before a final state (is it shutting down?)",
        args.id
    )))
}

/// One line per state change: time, state, attempts, error.
fn watch_line(n: &pb::Notification) -> String {
    let mut line = format!(
        "{}  {}",
        n.update_time
            .as_ref()
            .map(json::format_timestamp)
            .unwrap_or_default(),
        values::state(n.state)
    );
    if n.attempts > 0 {
        line.push_str(&format!("  attempts={}", n.attempts));
    }
    if !n.last_error.is_empty() {
        line.push_str(&format!("  {}", n.last_error));
    }
    line
}

fn describe(n: &pb::Notification) -> String {
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(json::format_timestamp).unwrap_or_default()
    };
    let mut kv = table::KeyValues::default();
    kv.add("id", n.id.clone())
        .add("connection", n.connection.clone())
        .add("state", values::state(n.state))
        .add("attempts", n.attempts.to_string())
        .add("last_error", n.last_error.clone())
        .add("next_attempt_time", time(&n.next_attempt_time))
        .add("create_time", time(&n.create_time))
        .add("update_time", time(&n.update_time))
        .add("provider_message_id", n.provider_message_id.clone());
    for r in &n.rejected_recipients {
        kv.add("rejected", format!("{}: {}", r.address, r.reply));
    }
    kv.render()
}

fn build_message(args: &SendArgs) -> Result<pb::EmailMessage, CliError> {
    let mut headers = HashMap::new();
    for h in &args.header {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| CliError::input(format!("--header {h:?}: expected 'Name: value'")))?;
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    let text_body = match (&args.text, &args.text_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => read_body(path, "--text-file")?,
        (None, None) => String::new(),
    };
    let html_body = match &args.html_file {
        Some(path) => read_body(path, "--html-file")?,
        None => String::new(),
    };
    Ok(pb::EmailMessage {
        to: addresses(&args.to),
        cc: addresses(&args.cc),
        bcc: addresses(&args.bcc),
        reply_to: addresses(&args.reply_to),
        subject: args.subject.clone(),
        text_body,
        html_body,
        attachments: args
            .attach
            .iter()
            .map(|a| attachment(a))
            .collect::<Result<_, _>>()?,
        headers,
        priority: args.priority.map_or(0, |p| pb::Priority::from(p) as i32),
    })
}

fn read_body(path: &Path, flag: &str) -> Result<String, CliError> {
    let err =
        |e: std::io::Error| CliError::input(format!("cannot read {flag} {}: {e}", path.display()));
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(err)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(err)
    }
}

/// `a@x, "Petrov, Ivan" <b@x>, Имя <c@x>` → addresses. Commas inside quotes
/// or angle brackets do not split; the server checks the addresses.
fn addresses(values: &[String]) -> Vec<pb::Address> {
    let mut out = Vec::new();
    for value in values {
        let mut item = String::new();
        let (mut quoted, mut angle) = (false, false);
        let mut items = Vec::new();
        for ch in value.chars() {
            match ch {
                '"' => quoted = !quoted,
                '<' if !quoted => angle = true,
                '>' if !quoted => angle = false,
                ',' if !quoted && !angle => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(ch);
        }
        items.push(item);
        out.extend(
            items
                .iter()
                .map(|i| i.trim())
                .filter(|i| !i.is_empty())
                .map(address),
        );
    }
    out
}

fn address(item: &str) -> pb::Address {
    if let Some(rest) = item.strip_suffix('>')
        && let Some((name, addr)) = rest.rsplit_once('<')
    {
        let name = name.trim();
        let name = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .unwrap_or(name);
        return pb::Address {
            address: addr.trim().to_owned(),
            display_name: name.to_owned(),
        };
    }
    pb::Address {
        address: item.to_owned(),
        display_name: String::new(),
    }
}

/// `FILE[:type/subtype]` → an attachment named after the file.
fn attachment(spec: &str) -> Result<pb::Attachment, CliError> {
    let (path, content_type) = match spec.rsplit_once(':') {
        Some((path, t)) if is_mime_type(t) => (path, Some(t.to_owned())),
        _ => (spec, None),
    };
    let path = Path::new(path);
    let content = std::fs::read(path)
        .map_err(|e| CliError::input(format!("cannot read --attach {}: {e}", path.display())))?;
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::input(format!("--attach {spec:?} names no file")))?;
    let content_type = content_type.unwrap_or_else(|| guess_type(&filename).to_owned());
    Ok(pb::Attachment {
        filename,
        content_type,
        content,
        content_id: String::new(),
    })
}

fn is_mime_type(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    matches!(t.split_once('/'), Some((a, b)) if token(a) && token(b))
}

fn guess_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_on_commas_outside_names() {
        let got = addresses(&[
            "a@example.com, \"Petrov, Ivan\" <b@example.com>".into(),
            "Дежурный <c@example.com>".into(),
        ]);
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|a| (a.address.as_str(), a.display_name.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a@example.com", ""),
                ("b@example.com", "Petrov, Ivan"),
                ("c@example.com", "Дежурный"),
            ]
        );
    }

    #[test]
    fn an_attachment_type_follows_the_last_colon_only_when_it_is_a_mime_type() {
        assert!(is_mime_type("application/pdf"));
        assert!(!is_mime_type("pdf"));
        assert!(!is_mime_type("b/c d"));
        assert_eq!(guess_type("Отчёт.PDF"), "application/pdf");
        assert_eq!(guess_type("noext"), "application/octet-stream");
    }
}
