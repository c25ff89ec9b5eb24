//! `transport` (in progress).
