//! gRPC services: wire types ↔ domain types, and the mapping of every error
//! to a `tonic::Status` (in one place, here).

mod admin;
mod convert;
mod mask;
mod message;
mod notifier;

pub use admin::AdminService;
pub use message::MessageLimits;
pub use notifier::{NotifierService, SendLimits};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{domain::Violations, store::StoreError};

/// `INVALID_ARGUMENT` with a `BadRequest` detail naming every bad field.
pub fn invalid(violations: Violations) -> Status {
    let message = violations.to_string();
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
