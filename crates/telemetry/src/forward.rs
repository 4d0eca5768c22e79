//! The hand-off from a process's trace and log stores to the store every process
//! shares (`shared_store`): a bounded queue that never waits.

use std::sync::Arc;

/// Where a process's kept spans or lines go instead of its own memory.
#[derive(Debug)]
pub(crate) struct Forward<T> {
    pub(crate) to: tokio::sync::mpsc::Sender<T>,
    /// Counts what a full queue turned away.
    pub(crate) dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Forward<T> {
    /// Queues `item` without waiting; a full queue drops it (counted).
    pub(crate) fn send(&self, item: T, count: usize) {
        if self.to.try_send(item).is_err() {
            self.dropped
                .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
