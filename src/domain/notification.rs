//! A notification: one message's journey through the outbox, and the state
//! machine it follows.
//!
//! QUEUED → SENDING → DELIVERED
//!                  ↘ RETRYING → SENDING → …
//!                  ↘ FAILED
//! QUEUED | RETRYING → CANCELED

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Queued,
    Sending,
    Retrying,
    Delivered,
    Failed,
    Canceled,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, State::Delivered | State::Failed | State::Canceled)
    }

    /// A one-byte code for indexes.
    pub fn code(self) -> u8 {
        match self {
            State::Queued => 1,
            State::Sending => 2,
            State::Retrying => 3,
            State::Delivered => 4,
            State::Failed => 5,
            State::Canceled => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<State> {
        Some(match code {
            1 => State::Queued,
            2 => State::Sending,
            3 => State::Retrying,
            4 => State::Delivered,
            5 => State::Failed,
            6 => State::Canceled,
            _ => return None,
        })
    }
}

/// A notification id: a UUIDv7, so that ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NotificationId(pub [u8; 16]);

impl NotificationId {
    pub fn new() -> Self {
        Self(*uuid::Uuid::now_v7().as_bytes())
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        uuid::Uuid::try_parse(s)
            .map(|u| Self(*u.as_bytes()))
            .map_err(|_| format!("{s:?} is not a notification id"))
    }
}

impl Default for NotificationId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for NotificationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub address: String,
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    pub connection: String,
    pub state: State,
    pub attempts: u32,
    pub last_error: String,
    pub next_attempt_time: Option<SystemTime>,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub provider_message_id: String,
    pub rejected: Vec<Rejected>,
    pub idempotency_key: String,
}
