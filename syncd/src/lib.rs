//! syncd: a throughput-focused file synchroniser.
//!
//! The crate is split into sans-IO cores (no filesystem, socket or clock access) and
//! IO edges that drive them. See `ARCHITECTURE.md` at the repository root for the code
//! map and the invariants.
//!
//! Sans-IO cores: [`chunk`], [`manifest`] (not `manifest::store`), [`proto`], [`limit`],
//! [`rate`], [`timetable`], [`ledbat`] (but its quinn adapter), [`dest`], [`filter`], [`wire`],
//! [`lock`], [`partname`] (but its key file), [`control::proto`]. IO edges:
//! [`manifest::store`], [`fsmeta`], [`scan`], [`transport`], [`identity`], [`apply`], [`push`],
//! [`control`], [`watch`] (but its `Batcher`), [`bwlimit`] (its driver).

pub mod apply;
pub mod bwlimit;
pub mod chunk;
pub mod control;
pub mod dest;
pub mod filter;
pub mod fsmeta;
pub mod identity;
pub mod ledbat;
pub mod limit;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod partname;
pub mod proto;
pub mod push;
pub mod rate;
pub mod scan;
pub mod timetable;
pub mod transport;
pub mod watch;
pub mod wire;
