//! `cutover`: the go-time migration binary, as a library.
//!
//! The library holds the runbook model ([`runbook`], pure), the database switch-over ([`db`]:
//! setup, status, promote and verify of a MySQL-family replica pair), the load balancer
//! ([`lb`]: HAProxy's runtime API) and the DNS switch ([`dns`]: TSIG-signed RFC 2136 updates
//! and propagation checks). The deciding parts (statement generation per dialect, GTID
//! arithmetic, checksum chunking, HAProxy answers, DNS messages and verdicts) are pure
//! functions with table-driven tests; the IO shells around them talk to the real servers. The
//! library never prints and never exits: the `cutover` binary turns reports into output and
//! exit codes. Health checks ([`health`]) and service hooks ([`service`]) are the other edges;
//! go-time chains them all: [`plan`] (the steps and the execution state machine, pure),
//! [`journal`] (fsynced JSON lines), [`run`] (the driver), [`preflight`], [`migration_plan`]
//! (the Markdown plan) and [`sync`] (syncd's control socket).
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use cutover::runbook::Runbook;
//!
//! let text = r#"
//! [database]
//! source  = "mysql://root:pw@10.0.0.1:3306"
//! replica = "mysql://root:pw@10.0.0.2:3306"
//! replication_password = "secret"
//! catch_up_timeout = "5s"
//! "#;
//! let no_files = |_: &Path| Err("no secret files here".to_string());
//! let runbook = Runbook::parse(text, Path::new("runbook.toml"), &no_files).unwrap();
//! let db = runbook.database.unwrap();
//! assert_eq!(db.catch_up_timeout, Duration::from_secs(5));
//! assert_eq!(db.replication_user, "repl"); // the default
//!
//! // Errors name the key.
//! let bad = text.replace("\"5s\"", "\"soon\"");
//! let err = Runbook::parse(&bad, Path::new("runbook.toml"), &no_files).unwrap_err();
//! assert!(err.to_string().contains("database.catch_up_timeout"));
//! ```

pub mod db;
pub mod dns;
pub mod health;
pub mod journal;
pub mod lb;
pub mod migration_plan;
pub mod plan;
pub mod preflight;
pub mod run;
pub mod runbook;
pub mod service;
pub mod sync;
