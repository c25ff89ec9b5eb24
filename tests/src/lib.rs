//! Test support: throw-away servers on loopback, each spawned per test in a temporary
//! directory with free ports and removed on drop.
//!
//! - [`mariadb`]: `mariadbd` servers and source/replica pairs;
//! - [`bind`]: `named` primaries and secondaries with TSIG keys;
//! - [`haproxy`]: `haproxy` with admin and user runtime API sockets;
//! - [`http`]: a tiny HTTP server to stand behind HAProxy or to be health-checked;
//! - [`sshd`]: `sshd` with a client key, for hooks that run over ssh.
//!
//! [`under_ci`] is the one skip rule of every test in the workspace: a test that cannot
//! have what it needs (a binary, root) skips with a message, except under `CI=true`,
//! where it fails.
pub mod bind;
pub mod haproxy;
pub mod http;
pub mod mariadb;
pub mod sshd;

/// True under CI (`CI=true`): a test that cannot have what it needs then fails instead of
/// skipping.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
