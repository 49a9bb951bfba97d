//! How an SMTP step failed: the stage it reached (TestConnection reports
//! it), whether a retry can help (the dispatcher's retry policy needs it),
//! and words fit for a user: the server's own reply where there is one,
//! never a secret.

use std::{error::Error as StdError, fmt, io, time::Duration};

use lettre::transport::smtp::Error as SmtpError;

use crate::backend::{DeliveryError, FailureKind, RejectedRecipient};

/// The steps of a session, in order. The first five are TestConnection's
/// stages; `Recipients` and `Data` only occur while sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Tls,
    Ehlo,
    Auth,
    Sender,
    Recipients,
    Data,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Ehlo => "ehlo",
            Stage::Auth => "auth",
            Stage::Sender => "sender",
            Stage::Recipients => "rcpt",
            Stage::Data => "data",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub stage: Stage,
    pub kind: FailureKind,
    pub message: String,
    /// Recipients refused one by one before the attempt failed.
    pub rejected: Vec<RejectedRecipient>,
}

impl Failure {
    pub fn transient(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(stage, FailureKind::Transient, message)
    }

    pub fn permanent(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(stage, FailureKind::Permanent, message)
    }

    fn new(stage: Stage, kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            stage,
            kind,
            message: message.into(),
            rejected: Vec::new(),
        }
    }

    pub fn timeout(stage: Stage, what: &str, after: Duration) -> Self {
        Self::transient(
            stage,
            format!(
                "timed out after {} waiting for {what}",
                humantime::format_duration(round_to_millis(after))
            ),
        )
    }

    /// Classifies an error from lettre's SMTP client. `context` says what
    /// was being done ("authentication rejected", "sender refused", ...).
    ///
    /// - a 4xx reply is transient, a 5xx reply permanent, with the reply;
    /// - a certificate that fails verification is permanent: retrying
    ///   cannot make it valid, the settings must change;
    /// - anything else on the network (refused, reset, timed out, closed
    ///   mid-reply, TLS handshake I/O) is transient.
    pub fn from_smtp(stage: Stage, context: &str, err: &SmtpError) -> Self {
        if let Some(reply) = reply_text(err) {
            let kind = if err.is_permanent() {
                FailureKind::Permanent
            } else {
                FailureKind::Transient
            };
            return Self::new(stage, kind, format!("{context}: {reply}"));
        }
        if let Some(tls) = find_in_chain::<rustls::Error>(err) {
            return match tls {
                rustls::Error::InvalidCertificate(why) => Self::permanent(
                    Stage::Tls,
                    format!(
                        "the server's TLS certificate failed verification ({why:?}); if a \
                         private CA signed it, put that CA in trusted_ca_pem, or set \
                         accept_invalid_certs to skip verification (insecure)"
                    ),
                ),
                other => Self::transient(Stage::Tls, format!("TLS handshake failed: {other}")),
            };
        }
        if let Some(io) = find_in_chain::<io::Error>(err) {
            return Self::transient(stage, format!("{context}: {}", describe_io(io)));
        }
        // lettre's own "client" errors are local decisions (e.g. a challenge
        // it cannot answer) that a retry would repeat.
        let kind = if err.is_client() {
            FailureKind::Permanent
        } else {
            FailureKind::Transient
        };
        Self::new(stage, kind, format!("{context}: {err}"))
    }

    pub fn with_rejected(mut self, rejected: Vec<RejectedRecipient>) -> Self {
        self.rejected = rejected;
        self
    }

    /// Replaces each secret (and anything derived from it that a server
    /// might echo back, such as a base64 AUTH line) with `<redacted>`.
    pub fn redact(mut self, secrets: &[String]) -> Self {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if self.message.contains(secret.as_str()) {
                self.message = self.message.replace(secret.as_str(), "<redacted>");
            }
        }
        self
    }
}

impl From<Failure> for DeliveryError {
    fn from(f: Failure) -> Self {
        DeliveryError {
            kind: f.kind,
            message: f.message,
            retry_after: None,
            rejected: f.rejected,
        }
    }
}

/// The reply of a negative SMTP response as the server wrote it,
/// e.g. `535 5.7.8 Authentication credentials invalid`.
pub fn reply_text(err: &SmtpError) -> Option<String> {
    let code = err.status()?;
    // lettre keeps the reply text (all lines joined) as the error's source.
    let text = err.source().map(|s| s.to_string()).unwrap_or_default();
    Some(format!("{code} {text}").trim_end().to_owned())
}

/// The kind of the I/O error behind a lettre error, if there is one.
pub fn io_kind(err: &SmtpError) -> Option<io::ErrorKind> {
    find_in_chain::<io::Error>(err).map(io::Error::kind)
}

/// Finds an error of type `T` anywhere in the source chain. `io::Error`
/// hides its payload from `source()` (it reports the payload's source), so
/// its inner error is looked at explicitly: that is where tokio-rustls puts
/// the `rustls::Error` of a failed handshake.
fn find_in_chain<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<T>())
        {
            return Some(inner);
        }
        current = e.source();
    }
    None
}

fn describe_io(e: &io::Error) -> String {
    let what = match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset by the server",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::UnexpectedEof => "the server closed the connection",
        io::ErrorKind::BrokenPipe => "the server closed the connection (broken pipe)",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        _ => return e.to_string(),
    };
    what.to_owned()
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_every_occurrence() {
        let f = Failure::permanent(
            Stage::Auth,
            "500 unknown command AUTH PLAIN c2VjcmV0 secret",
        )
        .redact(&["secret".into(), "c2VjcmV0".into(), String::new()]);
        assert_eq!(
            f.message,
            "500 unknown command AUTH PLAIN <redacted> <redacted>"
        );
    }

    #[test]
    fn stages_have_the_names_test_connection_reports() {
        let names: Vec<&str> = [
            Stage::Connect,
            Stage::Tls,
            Stage::Ehlo,
            Stage::Auth,
            Stage::Sender,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(names, ["connect", "tls", "ehlo", "auth", "sender"]);
    }
}
