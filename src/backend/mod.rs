//! Delivery backends. One small trait, one implementation per technology
//! (SMTP, Exchange EWS), each in its own module. A backend knows nothing of
//! gRPC or the store: it gets a validated connection and message and says
//! what happened, classified as the retry policy needs it.

pub mod exchange;
pub mod mime;
pub mod ntlm;
pub mod smtp;

use std::time::Duration;

use crate::domain::{Connection, OutgoingMessage};

/// A message the server accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// SMTP: the server's reply to the end of DATA; EWS: the item id, if any.
    pub provider_message_id: String,
    /// Recipients the server refused while it accepted others.
    pub rejected: Vec<RejectedRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecipient {
    pub address: String,
    /// The server's own words.
    pub reply: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying: 4xx, connection loss, timeouts, throttling.
    Transient,
    /// Retrying cannot help: 5xx, authentication rejected, invalid certificate.
    Permanent,
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub kind: FailureKind,
    /// The server's own words where there are any; never a secret.
    pub message: String,
    /// A back-off the server asked for (EWS `BackOffMilliseconds`).
    pub retry_after: Option<Duration>,
    /// Recipients refused one by one (e.g. every RCPT got 550).
    pub rejected: Vec<RejectedRecipient>,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.into(),
            retry_after: None,
            rejected: Vec::new(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
            retry_after: None,
            rejected: Vec::new(),
        }
    }
}

/// What a connection test found: the last stage reached and the server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    pub ok: bool,
    /// SMTP: connect, tls, ehlo, auth, sender. EWS: connect, tls, auth, ews.
    pub stage: &'static str,
    pub detail: String,
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Delivers one message through `connection`. Implementations may keep
    /// per-connection state (pools) and must notice when the settings change.
    async fn send(
        &self,
        connection: &Connection,
        message: &OutgoingMessage,
    ) -> Result<Delivery, DeliveryError>;

    /// Checks that `connection` works without sending mail.
    async fn test(&self, connection: &Connection) -> TestReport;

    /// Drops any state kept for a connection (deleted or changed).
    async fn forget(&self, _connection_name: &str) {}
}
