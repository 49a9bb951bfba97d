//! Bearer tokens and roles. The tokens file holds only SHA-256 hashes of
//! the tokens, one per line:
//!
//! ```text
//! # comment
//! sha256:<64 hex digits> <role>[,<role>…] [name]
//! ```
//!
//! Roles: `admin` (ConnectionAdmin) and `sender` (Notifier). A token is
//! `ngt_` followed by 43 base64url characters (32 random bytes); it is shown
//! once, by `notigate token create`, and never stored.

use std::{
    collections::HashMap,
    fmt,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Sender,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "sender" => Ok(Role::Sender),
            other => Err(format!("unknown role {other:?}: use admin or sender")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Sender => "sender",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub roles: Vec<Role>,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokens file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write tokens file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn hash_hex(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a tokens file: hash → entry.
pub fn parse_tokens(
    path: &Path,
    text: &str,
) -> Result<HashMap<String, TokenEntry>, TokenFileError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| TokenFileError::Parse {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let mut parts = line.splitn(3, char::is_whitespace);
        let hash = parts.next().unwrap_or_default();
        let hex = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| err("expected sha256:<64 hex digits>".into()))?;
        let roles = parts
            .next()
            .ok_or_else(|| err("missing roles (admin, sender)".into()))?
            .split(',')
            .map(|r| Role::parse(r.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let name = parts.next().unwrap_or_default().trim().to_owned();
        out.insert(hex.to_ascii_lowercase(), TokenEntry { roles, name });
    }
    Ok(out)
}

/// Creates a token with `roles`, appends its hash to `path` (created with
/// mode 0600 when missing) and returns the token, to be shown once.
pub fn create_token(path: &Path, roles: &[Role], name: &str) -> Result<String, TokenFileError> {
    if name.contains(['\n', '\r']) {
        return Err(TokenFileError::Parse {
            path: path.to_owned(),
            line: 0,
            message: "a token name must be one line".into(),
        });
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("ngt_{}", URL_SAFE_NO_PAD.encode(bytes));
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let line = format!("sha256:{} {} {}\n", hash_hex(&token), roles.join(","), name);
    let write_err = |source| TokenFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err)?;
    file.write_all(line.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(token)
}

/// The tokens the server accepts, re-read when the file changes (checked at
/// most once a second), so that `notigate token create` takes effect
/// without a restart.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<RwLock<Loaded>>,
    path: PathBuf,
}

struct Loaded {
    tokens: HashMap<String, TokenEntry>,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let (tokens, modified) = read(path)?;
        Ok(Tokens {
            inner: Arc::new(RwLock::new(Loaded {
                tokens,
                modified,
                checked: Instant::now(),
            })),
            path: path.to_owned(),
        })
    }

    fn refresh(&self) {
        let due = self
            .inner
            .read()
            .map(|l| l.checked.elapsed() >= Duration::from_secs(1))
            .unwrap_or(true);
        if !due {
            return;
        }
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let Ok(mut loaded) = self.inner.write() else {
            return;
        };
        loaded.checked = Instant::now();
        if modified == loaded.modified {
            return;
        }
        match read(&self.path) {
            Ok((tokens, modified)) => {
                tracing::info!(tokens = tokens.len(), "tokens file reloaded");
                loaded.tokens = tokens;
                loaded.modified = modified;
            }
            // Keep the tokens we have; a half-written file must not lock
            // everyone out.
            Err(e) => tracing::error!(error = %e, "tokens file not reloaded"),
        }
    }

    /// Checks the request's bearer token for `role`.
    pub fn check<T>(&self, request: &Request<T>, role: Role) -> Result<(), Status> {
        self.refresh();
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization must be: Bearer <token>"))?;
        let hash = hash_hex(token);
        let loaded = self
            .inner
            .read()
            .map_err(|_| Status::internal("token table unavailable"))?;
        let entry = loaded
            .tokens
            .get(&hash)
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if entry.roles.contains(&role) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this token lacks the {role} role"
            )))
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|l| l.tokens.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read(path: &Path) -> Result<(HashMap<String, TokenEntry>, Option<SystemTime>), TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((parse_tokens(path, &text)?, modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_is_accepted_for_its_roles_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let token = create_token(&path, &[Role::Sender], "ci").unwrap();
        assert!(token.starts_with("ngt_"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&token),
            "the token itself must not be stored"
        );
        let tokens = Tokens::load(&path).unwrap();
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert!(tokens.check(&req, Role::Sender).is_ok());
        assert_eq!(
            tokens.check(&req, Role::Admin).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let mut other = Request::new(());
        other
            .metadata_mut()
            .insert("authorization", "Bearer ngt_nope".parse().unwrap());
        assert_eq!(
            tokens.check(&other, Role::Sender).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            tokens
                .check(&Request::new(()), Role::Sender)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        let e = parse_tokens(Path::new("t"), "sha256:abc admin\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let h = "a".repeat(64);
        let e = parse_tokens(Path::new("t"), &format!("sha256:{h} root\n")).unwrap_err();
        assert!(e.to_string().contains("unknown role"), "{e}");
    }
}
