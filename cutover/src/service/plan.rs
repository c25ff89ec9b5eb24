//! The deciding half of `cutover service`: after each look at the service's check, what to do
//! next, with the time spent so far passed in. No IO, no clock.

use std::time::Duration;

/// Where a stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPhase {
    /// The graceful stop command has run; waiting for the check to fail.
    Graceful,
    /// The kill has been done; waiting for the check to fail.
    Killed,
}

/// What a stop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopNext {
    /// Look at the check again after this long.
    CheckAfter(Duration),
    /// The graceful stop did not stop it in time: kill it.
    Kill,
    /// Finished: whether the check now says it is stopped.
    Done {
        /// The check fails (the service is down).
        stopped: bool,
    },
}

/// Decides the next step of a stop from the check's latest answer (`running`) and the time
/// spent in the current phase.
pub fn stop_next(
    phase: StopPhase,
    running: bool,
    elapsed: Duration,
    wait: Duration,
    poll: Duration,
    can_kill: bool,
) -> StopNext {
    if !running {
        return StopNext::Done { stopped: true };
    }
    if elapsed < wait {
        return StopNext::CheckAfter(poll.min(wait - elapsed));
    }
    match phase {
        StopPhase::Graceful if can_kill => StopNext::Kill,
        _ => StopNext::Done { stopped: false },
    }
}

/// What a start does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartNext {
    /// Look at the check again after this long.
    CheckAfter(Duration),
    /// Finished: whether the check now passes.
    Done {
        /// The check passes.
        running: bool,
    },
}

/// Decides the next step of a start from the check's latest answer.
pub fn start_next(running: bool, elapsed: Duration, wait: Duration, poll: Duration) -> StartNext {
    if running {
        StartNext::Done { running: true }
    } else if elapsed < wait {
        StartNext::CheckAfter(poll.min(wait - elapsed))
    } else {
        StartNext::Done { running: false }
    }
}

/// The last `max` bytes of a command's output, as text, with a marker when cut.
pub fn tail(output: &[u8], max: usize) -> String {
    if output.len() <= max {
        return String::from_utf8_lossy(output).into_owned();
    }
    let cut = &output[output.len() - max..];
    format!(
        "[{} bytes cut]{}",
        output.len() - max,
        String::from_utf8_lossy(cut)
    )
}

/// The `ssh` arguments that run `command` on `host` non-interactively.
pub fn ssh_args(
    host: &str,
    port: Option<u16>,
    options: &[String],
    connect_timeout: Duration,
    command: &str,
) -> Vec<String> {
    let mut args = vec![
        "-o".to_string(),
        "BatchMode=yes".to_string(),
        "-o".to_string(),
        format!("ConnectTimeout={}", connect_timeout.as_secs().max(1)),
    ];
    if let Some(p) = port {
        args.push("-p".into());
        args.push(p.to_string());
    }
    args.extend(options.iter().cloned());
    args.push("--".into());
    args.push(host.to_string());
    args.push(command.to_string());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_decisions() {
        let (w, p) = (Duration::from_secs(5), Duration::from_millis(100));
        let s = Duration::from_secs;
        use StopPhase::*;
        assert_eq!(
            stop_next(Graceful, false, s(0), w, p, true),
            StopNext::Done { stopped: true }
        );
        assert_eq!(
            stop_next(Graceful, true, s(1), w, p, true),
            StopNext::CheckAfter(p)
        );
        assert_eq!(
            stop_next(Graceful, true, Duration::from_millis(4_950), w, p, true),
            StopNext::CheckAfter(Duration::from_millis(50))
        );
        assert_eq!(stop_next(Graceful, true, s(5), w, p, true), StopNext::Kill);
        assert_eq!(
            stop_next(Graceful, true, s(5), w, p, false),
            StopNext::Done { stopped: false }
        );
        assert_eq!(
            stop_next(Killed, true, s(5), w, p, true),
            StopNext::Done { stopped: false }
        );
        assert_eq!(
            stop_next(Killed, false, s(9), w, p, true),
            StopNext::Done { stopped: true }
        );
    }

    #[test]
    fn start_decisions() {
        let (w, p) = (Duration::from_secs(2), Duration::from_millis(100));
        assert_eq!(
            start_next(true, Duration::ZERO, w, p),
            StartNext::Done { running: true }
        );
        assert_eq!(
            start_next(false, Duration::ZERO, w, p),
            StartNext::CheckAfter(p)
        );
        assert_eq!(
            start_next(false, w, w, p),
            StartNext::Done { running: false }
        );
    }

    #[test]
    fn tails_and_ssh() {
        assert_eq!(tail(b"abc", 10), "abc");
        assert_eq!(tail(b"abcdef", 2), "[4 bytes cut]ef");
        let args = ssh_args(
            "app@db1",
            Some(2222),
            &["-i".into(), "k".into()],
            Duration::from_millis(500),
            "systemctl stop app",
        );
        assert_eq!(
            args.join(" "),
            "-o BatchMode=yes -o ConnectTimeout=1 -p 2222 -i k -- app@db1 systemctl stop app"
        );
    }
}
