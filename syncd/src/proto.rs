//! `proto` (in progress).
