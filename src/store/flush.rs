//! Group commit. One task owns flushing the sled database (concurrent
//! `flush_async` calls can deadlock in sled 0.34): callers that need their
//! writes durable queue a waiter; the task flushes once for everyone queued,
//! then `fdatasync`s the database file — sled's own flush only issues
//! `sync_file_range`, which survives a killed process but not a power loss.

use std::{fs::File, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

#[derive(Clone, Debug)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Flusher {
    /// Starts the flushing task. `db_file` is sled's main data file.
    pub fn start(db: sled::Db, db_file: File) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let db_file = Arc::new(db_file);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let db = db.clone();
                let file = db_file.clone();
                let result = tokio::task::spawn_blocking(move || {
                    db.flush().map_err(StoreError::from)?;
                    file.sync_data()
                        .map_err(|e| StoreError::from(sled::Error::Io(e)))
                })
                .await
                .unwrap_or_else(|e| Err(StoreError::Database(format!("flush task failed: {e}"))))
                .map(|_| ());
                if let Err(e) = &result {
                    tracing::error!(error = %e, "database flush failed");
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Waits until everything written before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let closed = || StoreError::Unavailable("the database is shutting down".into());
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}
