//! Sealing of secrets at rest: XChaCha20-Poly1305 under the master key, with
//! the owner of the secret as associated data so that a sealed value cannot be
//! moved to another record. Also finds or creates the master key.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::RngCore;

/// Where the master key comes from, in the order the operator can choose.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The key itself (from `NOTIGATE_MASTER_KEY`): 32 bytes as base64 or hex.
    Value(String),
    /// A file holding the key (`--master-key-file`).
    File(PathBuf),
    /// `<data-dir>/master.key`, generated at first start.
    Generated,
}

pub const GENERATED_KEY_FILE: &str = "master.key";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master key {origin}: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("cannot read master key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write master key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Seals and opens secrets. Holds the key; never prints it.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

impl Sealer {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption fails only for inputs beyond 256 GiB.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        out
    }

    /// `None` when the data was sealed under another key or for another owner,
    /// or was altered.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// Parses a key written as base64 (44 characters) or hex (64 characters).
pub fn parse_key(text: &str, origin: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        B64.decode(text).ok()
    };
    let invalid = |reason: &str| KeyError::Invalid {
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    };
    let bytes = bytes.ok_or_else(|| invalid("is neither base64 nor hex"))?;
    bytes
        .try_into()
        .map_err(|_| invalid("must be 32 bytes (44 base64 or 64 hex characters)"))
}

pub struct LoadedKey {
    pub key: [u8; 32],
    /// Set when the key was generated just now, so the caller can warn.
    pub generated_at: Option<PathBuf>,
}

/// Finds the master key. A generated key is only created when `may_generate`
/// (the store is new): a store whose key file went missing must not be
/// silently re-keyed.
pub fn load_key(
    source: &KeySource,
    data_dir: &Path,
    may_generate: bool,
) -> Result<LoadedKey, KeyError> {
    match source {
        KeySource::Value(v) => Ok(LoadedKey {
            key: parse_key(v, "from NOTIGATE_MASTER_KEY")?,
            generated_at: None,
        }),
        KeySource::File(path) => {
            let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(LoadedKey {
                key: parse_key(&text, &format!("in {}", path.display()))?,
                generated_at: None,
            })
        }
        KeySource::Generated => {
            let path = data_dir.join(GENERATED_KEY_FILE);
            match fs::read_to_string(&path) {
                Ok(text) => Ok(LoadedKey {
                    key: parse_key(&text, &format!("in {}", path.display()))?,
                    generated_at: None,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_generate => {
                    let mut key = [0u8; 32];
                    rand::rng().fill_bytes(&mut key);
                    write_new_key_file(&path, &key).map_err(|source| KeyError::Write {
                        path: path.clone(),
                        source,
                    })?;
                    Ok(LoadedKey {
                        key,
                        generated_at: Some(path),
                    })
                }
                Err(source) => Err(KeyError::Read { path, source }),
            }
        }
    }
}

/// Creates the key file exclusively with mode 0600 and syncs it, so that a
/// crash cannot leave a store sealed under a key that was never on disk.
fn write_new_key_file(path: &Path, key: &[u8; 32]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{}", B64.encode(key))?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_owner() {
        let a = Sealer::from_key(&[1; 32]);
        let b = Sealer::from_key(&[2; 32]);
        let sealed = a.seal(b"hunter2", b"conn_a");
        assert_eq!(a.open(&sealed, b"conn_a").as_deref(), Some(&b"hunter2"[..]));
        assert!(a.open(&sealed, b"conn_b").is_none());
        assert!(b.open(&sealed, b"conn_a").is_none());
    }

    #[test]
    fn keys_parse_from_base64_and_hex() {
        let hex = "00".repeat(32);
        assert_eq!(parse_key(&hex, "t").unwrap(), [0; 32]);
        let b64 = B64.encode([7u8; 32]);
        assert_eq!(parse_key(&b64, "t").unwrap(), [7; 32]);
        assert!(parse_key("short", "t").is_err());
    }
}
