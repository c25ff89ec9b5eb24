//! `apply` (in progress).
