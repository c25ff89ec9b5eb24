//! `cutover`: the go-time migration binary, as a library.
//!
//! The library holds the runbook model ([`runbook`], pure) and the database switch-over
//! ([`db`]: setup, status, promote and verify of a MySQL-family replica pair). The deciding
//! parts (statement generation per dialect, GTID arithmetic, checksum chunking) are pure
//! functions with table-driven tests; the IO shell around them uses `mysql_async`. The library
//! never prints and never exits: the `cutover` binary turns reports into output and exit codes.
//! Load balancer, DNS, health checks and the journaled `run`/`rollback` are not here yet.

pub mod db;
pub mod runbook;
