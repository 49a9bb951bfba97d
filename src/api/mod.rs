//! gRPC services: wire types ↔ domain types, and the mapping of every error
//! to a `tonic::Status` (in one place, here).

mod admin;
mod convert;
mod mask;
mod message;
mod notifier;

pub use admin::AdminService;
pub use message::{MessageError, MessageLimits, parse_message};
pub use notifier::{NotifierService, SendLimits};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{domain::Violations, store::StoreError};

/// Most field violations one status carries. The status travels in HTTP/2
/// trailers (message and details both): a request with thousands of bad
/// recipients would otherwise produce a trailer block that the client
/// refuses as a protocol error, closing the whole connection.
const MAX_VIOLATIONS: usize = 20;
/// Longest description kept per violation, in bytes.
const MAX_DESCRIPTION: usize = 300;

fn shortened(mut text: String) -> String {
    if text.len() > MAX_DESCRIPTION {
        let mut end = MAX_DESCRIPTION;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// `INVALID_ARGUMENT` with a `BadRequest` detail naming every bad field (the
/// first [`MAX_VIOLATIONS`] of them; the message says how many more).
pub fn invalid(mut violations: Violations) -> Status {
    let more = violations.0.len().saturating_sub(MAX_VIOLATIONS);
    violations.0.truncate(MAX_VIOLATIONS);
    for v in &mut violations.0 {
        v.description = shortened(std::mem::take(&mut v.description));
    }
    let mut message = violations.to_string();
    if more > 0 {
        message.push_str(&format!(" (and {more} more violations)"));
    }
    let details = ErrorDetails::with_bad_request(
        violations
            .0
            .into_iter()
            .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// One invalid field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut v = Violations::default();
    v.add(field, description);
    invalid(v)
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match &e {
            StoreError::NotFound(_) => Status::not_found(e.to_string()),
            StoreError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            StoreError::EtagMismatch { .. } => Status::aborted(e.to_string()),
            StoreError::Full(_) => {
                tracing::warn!(error = %e, "refused: the disk is full");
                Status::resource_exhausted(e.to_string())
            }
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "store failure");
                Status::unavailable(e.to_string())
            }
            StoreError::Corrupt { .. } | StoreError::Database(_) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(e.to_string())
            }
        }
    }
}

/// Reads an opaque page token: base64url of the last key of the previous page.
pub fn decode_page_token(token: &str) -> Result<Option<String>, Status> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("k:").map(str::to_owned))
        .map(Some)
        .ok_or_else(|| invalid_field("page_token", "is not a token this server issued"))
}

pub fn encode_page_token(last_key: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(format!("k:{last_key}"))
}

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// AIP-158: 0 means the default, larger values are capped, negative is an error.
pub fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(invalid_field("page_size", "must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}
