//! The read connections: a pool of its own beside the writer (WAL lets them read while it
//! writes).

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::store::{StoreError, StoreResult};

/// The read connections. A permit of `available` entitles its holder to one connection of
/// `idle`; both are given back together by the blocking task that used them.
pub(super) struct Readers {
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) available: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn take(&self) -> StoreResult<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .ok_or(StoreError::WriterGone)
    }

    pub(super) fn put_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}
