//! `scan` (in progress).
