//! `chunk` (in progress).
