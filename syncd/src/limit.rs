//! `limit` (in progress).
