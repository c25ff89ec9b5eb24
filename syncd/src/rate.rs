//! `rate` (in progress).
