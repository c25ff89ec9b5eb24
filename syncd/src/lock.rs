//! The poison-tolerant lock, written once: every state behind syncd's mutexes stays
//! consistent whatever panics (each update is one assignment or one collection operation),
//! so a lock a panicking thread held is still usable and is taken as it is.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking it as it is if a panicking thread held it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
