//! The store: owns the sled database, its trees, key encodings and the sealing
//! of secrets. Nothing outside this module touches sled.
//!
//! Trees:
//! - `meta`: format marker, master-key check value, name of the default connection.
//! - `connections`: connection name → JSON [`Record`] (password sealed).
//! - `outbox`: notifications, messages and their indexes (see `outbox.rs`).

mod flush;
mod outbox;
pub mod seal;

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

pub use flush::Flusher;
pub use outbox::{Change, Pending, millis};
pub use seal::KeySource;
use seal::Sealer;

use crate::domain::{Connection, ConnectionName, Secret};

const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"notigate-1";
const KEY_CHECK_KEY: &[u8] = b"key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"notigate master key check";
const DEFAULT_KEY: &[u8] = b"default_connection";
/// sled's page cache. Its default (1 GiB) let a large backlog grow the
/// process by the size of the queued mail; what is hot (new notifications,
/// the head of the queue, indexes) fits in much less.
const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;
/// The key check, also kept outside sled (see [`Store::open`]).
const KEY_CHECK_FILE: &str = "key.check";

/// Writes a file atomically and durably: temporary file, fsync, rename, fsync
/// of the directory.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another notigate process (its database is locked)")]
    Locked(PathBuf),
    #[error("cannot open the database in {path}: {reason}")]
    Database { path: PathBuf, reason: String },
    #[error(
        "{0} is not a notigate data directory (it holds other data); choose another --data-dir"
    )]
    Foreign(PathBuf),
    #[error(transparent)]
    Key(#[from] seal::KeyError),
    #[error(
        "the master key does not match the key this data directory was sealed with ({0}); \
         start with the original key — nothing was changed"
    )]
    WrongKey(PathBuf),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("connection {0:?} not found")]
    NotFound(String),
    #[error("connection {0:?} already exists")]
    AlreadyExists(String),
    #[error(
        "etag {given:?} does not match the current etag {current:?}: the connection changed since it was read"
    )]
    EtagMismatch { given: String, current: String },
    #[error("stored record {key:?} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("database error: {0}")]
    Database(String),
    /// The file system of the data directory is (nearly) full: nothing new
    /// is accepted until space returns. Mail already accepted keeps going
    /// out within the space held back for it.
    #[error("the disk of the data directory is full: {0}")]
    Full(String),
    /// The database cannot write (an I/O error); the state on disk is intact.
    #[error("the database cannot write right now: {0}")]
    Unavailable(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                StoreError::Full(e.to_string())
            }
            sled::Error::Io(_) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// A stored connection with the metadata the server maintains.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub connection: Connection,
    pub etag: String,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
}

/// The on-disk form of a connection. JSON: written rarely, read at dispatch
/// through a cache, and easy to evolve with `#[serde(default)]`.
#[derive(Serialize, Deserialize)]
struct Record {
    connection: Connection,
    /// base64 of the sealed password; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_password: Option<String>,
    etag: String,
    create_time: SystemTime,
    update_time: SystemTime,
}

pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    connections: sled::Tree,
    outbox: sled::Tree,
    sealer: Sealer,
    flusher: Flusher,
    data_dir: PathBuf,
}

pub struct Opened {
    pub store: Store,
    /// Set when a master key was generated at this start.
    pub generated_key: Option<PathBuf>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`. Must run inside a tokio
    /// runtime (the flushing task is spawned here).
    pub fn open(data_dir: &Path, key: &KeySource) -> Result<Opened, OpenError> {
        fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        // A wrong key is refused before sled is opened: opening sled runs
        // its recovery, which writes.
        let check_path = data_dir.join(KEY_CHECK_FILE);
        match fs::read(&check_path) {
            Ok(sealed) => {
                let loaded = seal::load_key(key, data_dir, false)?;
                if Sealer::from_key(&loaded.key)
                    .open(&sealed, KEY_CHECK_KEY)
                    .as_deref()
                    != Some(KEY_CHECK_PLAINTEXT)
                {
                    return Err(OpenError::WrongKey(data_dir.to_owned()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(OpenError::Database {
                    path: data_dir.to_owned(),
                    reason: format!("reading {}: {e}", check_path.display()),
                });
            }
        }
        let db_path = data_dir.join("db");
        if !check_path.exists() && db_path.exists() {
            // No key check beside a database: a first start that stopped
            // half-way, or someone else's database. Opening sled writes
            // (recovery, a snapshot), so look at a copy first.
            probe_unmarked(data_dir, &db_path)?;
        }
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| open_error(data_dir, e))?;
        let db_err = |e: sled::Error| OpenError::Database {
            path: data_dir.to_owned(),
            reason: e.to_string(),
        };
        check_format(&db, data_dir)?;
        let meta = db.open_tree("meta").map_err(db_err)?;
        let key_check = meta.get(KEY_CHECK_KEY).map_err(db_err)?;
        let loaded = seal::load_key(key, data_dir, key_check.is_none())?;
        let sealer = Sealer::from_key(&loaded.key);
        match key_check {
            Some(sealed) => {
                if sealer.open(&sealed, KEY_CHECK_KEY).as_deref() != Some(KEY_CHECK_PLAINTEXT) {
                    return Err(OpenError::WrongKey(data_dir.to_owned()));
                }
            }
            None => {
                meta.insert(
                    KEY_CHECK_KEY,
                    sealer.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK_KEY),
                )
                .map_err(db_err)?;
                meta.insert(FORMAT_KEY, FORMAT).map_err(db_err)?;
                db.flush().map_err(db_err)?;
            }
        }
        if !check_path.exists() {
            let sealed = meta.get(KEY_CHECK_KEY).map_err(db_err)?.unwrap_or_default();
            write_synced(&check_path, &sealed).map_err(|e| OpenError::Database {
                path: data_dir.to_owned(),
                reason: format!("writing {}: {e}", check_path.display()),
            })?;
        }
        let connections = db.open_tree("connections").map_err(db_err)?;
        let outbox = db.open_tree("outbox").map_err(db_err)?;
        let db_file = fs::File::open(db_path.join("db")).map_err(|e| OpenError::Database {
            path: data_dir.to_owned(),
            reason: format!("opening the database file for syncing: {e}"),
        })?;
        let flusher = Flusher::start(db.clone(), outbox.clone(), db_file);
        Ok(Opened {
            store: Store {
                db,
                meta,
                connections,
                outbox,
                sealer,
                flusher,
                data_dir: data_dir.to_owned(),
            },
            generated_key: loaded.generated_at,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Waits until every write made so far is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// Refuses new data of about `bytes` when the data directory's file
    /// system would be left with less than the space held back for the
    /// mail already accepted (its state changes until delivery): a quarter
    /// of the file system, at most 256 MiB. sled treats a failed write as fatal
    /// for the open database, so the disk must never fill up under it.
    pub fn check_space(&self, bytes: u64) -> Result<(), StoreError> {
        let Some((free, total)) = disk_space(&self.data_dir) else {
            return Ok(());
        };
        let reserve = (total / 4).min(256 * 1024 * 1024);
        // sled appends every write to its log: count it twice for the
        // rewrite when its segment is cleaned.
        let needed = bytes.saturating_mul(2).saturating_add(reserve);
        if free < needed {
            return Err(StoreError::Full(format!(
                "{free} bytes free in {}, {needed} needed to accept {bytes} more bytes and keep \
                 {reserve} for the mail already accepted; try again when space is freed",
                self.data_dir.display()
            )));
        }
        Ok(())
    }

    /// Flushes synchronously; for shutdown.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn password_aad(name: &ConnectionName) -> Vec<u8> {
        let mut aad = b"notigate:password:".to_vec();
        aad.extend_from_slice(name.as_str().as_bytes());
        aad
    }

    fn encode(&self, v: &Versioned) -> Vec<u8> {
        let sealed_password = v.connection.backend.password().map(|p| {
            B64.encode(self.sealer.seal(
                p.expose().as_bytes(),
                &Self::password_aad(&v.connection.name),
            ))
        });
        let record = Record {
            connection: v.connection.clone(),
            sealed_password,
            etag: v.etag.clone(),
            create_time: v.create_time,
            update_time: v.update_time,
        };
        // Serializing plain data structures to JSON cannot fail.
        serde_json::to_vec(&record).unwrap_or_default()
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Versioned, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        let record: Record = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut connection = record.connection;
        if let Some(sealed) = record.sealed_password {
            let sealed = B64.decode(sealed).map_err(|e| corrupt(e.to_string()))?;
            let plain = self
                .sealer
                .open(&sealed, &Self::password_aad(&connection.name))
                .ok_or_else(|| corrupt("the sealed password does not open".into()))?;
            let plain = String::from_utf8(plain).map_err(|e| corrupt(e.to_string()))?;
            connection.backend.set_password(Some(Secret::new(plain)));
        }
        Ok(Versioned {
            connection,
            etag: record.etag,
            create_time: record.create_time,
            update_time: record.update_time,
        })
    }

    pub fn get_connection(&self, name: &str) -> Result<Versioned, StoreError> {
        match self.connections.get(name.as_bytes())? {
            Some(bytes) => self.decode(name.as_bytes(), &bytes),
            None => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    /// The default connection, if one is set.
    pub fn default_connection(&self) -> Result<Option<Versioned>, StoreError> {
        match self.meta.get(DEFAULT_KEY)? {
            Some(name) => match self.get_connection(&String::from_utf8_lossy(&name)) {
                Ok(v) => Ok(Some(v)),
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// Up to `limit` connections in name order, starting after `after`.
    /// Returns them and whether more follow.
    pub fn list_connections(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Versioned>, bool), StoreError> {
        let iter = match after {
            Some(a) => self.connections.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.connections.iter(),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(self.decode(&k, &v)?);
        }
        Ok((out, false))
    }

    pub fn count_connections(&self) -> usize {
        self.connections.len()
    }

    /// Creates a connection; durable when this returns.
    pub async fn create_connection(&self, connection: Connection) -> Result<Versioned, StoreError> {
        let now = SystemTime::now();
        let created = Versioned {
            connection,
            etag: new_etag(),
            create_time: now,
            update_time: now,
        };
        let name = created.connection.name.clone();
        let encoded = self.encode(&created);
        self.transact(|conns, meta| {
            if conns.get(name.as_str().as_bytes())?.is_some() {
                return abort(StoreError::AlreadyExists(name.to_string()));
            }
            if created.connection.is_default {
                self.take_default(conns, meta, &name, now)?;
            }
            conns.insert(name.as_str().as_bytes(), encoded.as_slice())?;
            Ok(())
        })?;
        self.durable().await?;
        Ok(created)
    }

    /// Replaces a connection with what `change` makes of the current one,
    /// atomically: the etag check and the change see the same version.
    /// `change` may run more than once (transaction retries) and may refuse
    /// with its own error.
    pub async fn update_connection<E>(
        &self,
        name: &str,
        expected_etag: Option<&str>,
        change: impl Fn(&Versioned) -> Result<Connection, E>,
    ) -> Result<Result<Versioned, E>, StoreError> {
        let refused: std::cell::RefCell<Option<E>> = std::cell::RefCell::new(None);
        let updated = self.transact(|conns, meta| {
            let current = match conns.get(name.as_bytes())? {
                Some(bytes) => self.decode(name.as_bytes(), &bytes).or_else(abort)?,
                None => return abort(StoreError::NotFound(name.to_owned())),
            };
            check_etag(expected_etag, &current.etag).or_else(abort)?;
            let connection = match change(&current) {
                Ok(c) => c,
                Err(e) => {
                    *refused.borrow_mut() = Some(e);
                    return Ok(None);
                }
            };
            let now = SystemTime::now();
            let updated = Versioned {
                connection,
                etag: new_etag(),
                create_time: current.create_time,
                update_time: now,
            };
            let key = updated.connection.name.clone();
            if updated.connection.is_default && !current.connection.is_default {
                self.take_default(conns, meta, &key, now)?;
            } else if !updated.connection.is_default && current.connection.is_default {
                meta.remove(DEFAULT_KEY)?;
            }
            conns.insert(key.as_str().as_bytes(), self.encode(&updated))?;
            Ok(Some(updated))
        })?;
        match updated {
            Some(v) => {
                self.durable().await?;
                Ok(Ok(v))
            }
            None => Ok(Err(refused.into_inner().ok_or_else(|| {
                StoreError::Database("update refused without a reason".into())
            })?)),
        }
    }

    /// Deletes a connection; durable when this returns.
    pub async fn delete_connection(
        &self,
        name: &str,
        expected_etag: Option<&str>,
    ) -> Result<(), StoreError> {
        self.transact(|conns, meta| {
            let current = match conns.get(name.as_bytes())? {
                Some(bytes) => self.decode(name.as_bytes(), &bytes).or_else(abort)?,
                None => return abort(StoreError::NotFound(name.to_owned())),
            };
            check_etag(expected_etag, &current.etag).or_else(abort)?;
            conns.remove(name.as_bytes())?;
            if current.connection.is_default {
                meta.remove(DEFAULT_KEY)?;
            }
            Ok(())
        })?;
        self.durable().await
    }

    /// Makes `name` the default, clearing the flag on the previous default
    /// (a new etag and update time for it: its resource changed).
    fn take_default(
        &self,
        conns: &TransactionalTree,
        meta: &TransactionalTree,
        name: &ConnectionName,
        now: SystemTime,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        if let Some(previous) = meta.get(DEFAULT_KEY)?
            && previous.as_ref() != name.as_str().as_bytes()
            && let Some(bytes) = conns.get(&previous)?
        {
            let mut prev = self.decode(&previous, &bytes).or_else(abort)?;
            prev.connection.is_default = false;
            prev.etag = new_etag();
            prev.update_time = now;
            conns.insert(&previous, self.encode(&prev))?;
        }
        meta.insert(DEFAULT_KEY, name.as_str().as_bytes())?;
        Ok(())
    }

    fn transact<T>(
        &self,
        f: impl Fn(
            &TransactionalTree,
            &TransactionalTree,
        ) -> Result<T, ConflictableTransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        use sled::Transactional;
        (&self.connections, &self.meta)
            .transaction(|(conns, meta)| f(conns, meta))
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::from(e),
            })
    }
}

/// Refuses a database that is not notigate's. Empty trees do not count: a
/// first start that failed after creating `meta` must not make the
/// directory look foreign.
fn check_format(db: &sled::Db, data_dir: &Path) -> Result<(), OpenError> {
    let db_err = |e: sled::Error| OpenError::Database {
        path: data_dir.to_owned(),
        reason: e.to_string(),
    };
    let had_trees = !db.is_empty()
        || db.tree_names().iter().any(|name| {
            name.as_ref() != b"__sled__default"
                && db.open_tree(name).map(|t| !t.is_empty()).unwrap_or(true)
        });
    let meta = db.open_tree("meta").map_err(db_err)?;
    match meta.get(FORMAT_KEY).map_err(db_err)?.as_deref() {
        Some(FORMAT) => Ok(()),
        Some(_) => Err(OpenError::Foreign(data_dir.to_owned())),
        None if had_trees => Err(OpenError::Foreign(data_dir.to_owned())),
        None => Ok(()),
    }
}

/// The largest database without a key check that is looked at: a first
/// start that stopped half-way leaves a few KiB.
const PROBE_LIMIT: u64 = 16 * 1024 * 1024;

/// Checks a database that has no key check beside it on a copy, so that a
/// foreign one is refused without a byte of it changed.
fn probe_unmarked(data_dir: &Path, db_path: &Path) -> Result<(), OpenError> {
    let io_err = |what: &str, e: std::io::Error| OpenError::Database {
        path: data_dir.to_owned(),
        reason: format!("{what}: {e}"),
    };
    let mut files = Vec::new();
    let mut size = 0u64;
    let mut pending = vec![db_path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| io_err("reading the database", e))? {
            let entry = entry.map_err(|e| io_err("reading the database", e))?;
            let kind = entry
                .file_type()
                .map_err(|e| io_err("reading the database", e))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                size += entry
                    .metadata()
                    .map_err(|e| io_err("reading the database", e))?
                    .len();
                files.push(entry.path());
            }
        }
    }
    if size > PROBE_LIMIT {
        return Err(OpenError::Foreign(data_dir.to_owned()));
    }
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let copy = std::env::temp_dir().join(format!(
        "notigate-probe-{}-{}",
        std::process::id(),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let result = (|| {
        for file in &files {
            let relative = file.strip_prefix(db_path).unwrap_or(file);
            let target = copy.join(relative);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| io_err("copying the database", e))?;
            }
            fs::copy(file, &target).map_err(|e| io_err("copying the database", e))?;
        }
        let db = sled::Config::new()
            .path(&copy)
            .open()
            .map_err(|e| open_error(data_dir, e))?;
        check_format(&db, data_dir)
    })();
    let _ = fs::remove_dir_all(&copy);
    result
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn check_etag(expected: Option<&str>, current: &str) -> Result<(), StoreError> {
    match expected {
        Some(given) if !given.is_empty() && given != current => Err(StoreError::EtagMismatch {
            given: given.to_owned(),
            current: current.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Free bytes (for unprivileged users) and total bytes of the file system
/// holding `path`.
// The statvfs field types differ between platforms (u32 or u64).
#[allow(clippy::unnecessary_cast)]
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to
    // memory for one statvfs, which the call fills when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    let block = stat.f_frsize as u64;
    Some((
        (stat.f_bavail as u64).saturating_mul(block),
        (stat.f_blocks as u64).saturating_mul(block),
    ))
}

fn new_etag() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn open_error(data_dir: &Path, e: sled::Error) -> OpenError {
    let text = e.to_string();
    if let sled::Error::Io(io) = &e
        && (io.kind() == std::io::ErrorKind::WouldBlock || text.contains("lock"))
    {
        return OpenError::Locked(data_dir.to_owned());
    }
    OpenError::Database {
        path: data_dir.to_owned(),
        reason: text,
    }
}
