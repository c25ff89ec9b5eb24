//! `push` (in progress).
