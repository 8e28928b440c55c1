//! What can go wrong in the store, and which failures are the database's rather than a
//! request's.

use super::{postgres, sqlite};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the async queue is full")]
    QueueFull,
    #[error("the database writer has stopped")]
    WriterGone,
    /// The database cannot take the request now (unreachable, restarting, disk full), but may
    /// later: callers answer 503 with `Retry-After`, never 500.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the database {path} is in use by another syncasync process")]
    Locked { path: String },
    #[error("{0}")]
    Open(String),
    /// A write was answered with something it cannot be (a batch with fewer answers than
    /// writes, a replay without the key it replays): a bug, surfaced as an error (500)
    /// rather than read as an empty or negative answer.
    #[error("a database write answered {got} where {expected} was expected")]
    WrongReply {
        expected: &'static str,
        got: &'static str,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether the failure says nothing about the request itself, only that the database
    /// cannot serve it now: connection lost or refused, server shutting down or starting,
    /// out of disk or connections. Retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::WriterGone => true,
            StoreError::Postgres(err) => postgres::is_unavailable(err),
            StoreError::Sqlite(err) => sqlite::is_unavailable(err),
            StoreError::QueueFull
            | StoreError::Locked { .. }
            | StoreError::Open(_)
            | StoreError::WrongReply { .. } => false,
        }
    }
}
