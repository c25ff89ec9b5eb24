//! Daemon logs (`syncd serve`, `syncd push --watch`) through `tracing`.
//!
//! Levels come from `RUST_LOG` when it is set (e.g. `RUST_LOG=syncd=debug,quinn=info`),
//! else from the verbosity: `-q` warnings and errors only, the default adds each
//! connection and session (info), `-v` each batch (debug), `-vv` everything, quinn's and
//! rustls's own records included (quinn logs through `tracing`; rustls's `log` records are
//! routed here by `tracing-log`). On a terminal the lines are coloured; under systemd
//! (`JOURNAL_STREAM` is set) they are plain and carry no timestamp, which journald adds.

use std::io::IsTerminal;

/// The filter for a verbosity (`-1` quiet, `0` default, `1` `-v`, `2+` `-vv`) when
/// `RUST_LOG` is not set.
pub fn default_filter(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "syncd=info,quinn=warn,rustls=warn",
        1 => "syncd=debug,quinn=info,rustls=info",
        _ => "trace",
    }
}

/// Installs the subscriber for this process. A second call does nothing.
pub fn init(verbosity: i8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(default_filter(verbosity)))
        }
        _ => EnvFilter::new(default_filter(verbosity)),
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journald && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = if journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_widens_the_filter() {
        for v in [-3, -1, 0, 1, 2, 9] {
            assert!(tracing_subscriber::EnvFilter::try_new(default_filter(v)).is_ok());
        }
        assert_eq!(default_filter(-1), "warn");
        assert!(default_filter(0).contains("syncd=info"));
        assert!(default_filter(1).contains("syncd=debug"));
    }
}
