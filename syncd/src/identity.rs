//! `identity` (in progress).
