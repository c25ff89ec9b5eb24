//! The HAProxy runtime API as data: the commands `cutover lb` sends, the parsing of their
//! answers (`show stat` CSV and `show servers state`, both by column name, never by position),
//! and the decisions taken while waiting (drain and ready), with the elapsed time passed in.
//!
//! Nothing here opens a socket or reads a clock; [`super`] does the IO.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// An admin state to set with `set server B/S state ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetState {
    /// Back in rotation.
    Ready,
    /// No new sessions (except persistent ones); existing sessions go on.
    Drain,
    /// Out of rotation, health checks stopped.
    Maint,
}

impl fmt::Display for SetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetState::Ready => "ready",
            SetState::Drain => "drain",
            SetState::Maint => "maint",
        })
    }
}

/// `set server BACKEND/SERVER state STATE`.
pub fn set_state(backend: &str, server: &str, state: SetState) -> String {
    format!("set server {backend}/{server} state {state}")
}

/// `show stat BACKEND 4 -1`: the CSV statistics of the backend's servers.
pub fn show_stat(backend: &str) -> String {
    format!("show stat {backend} 4 -1")
}

/// `show servers state BACKEND`: admin and operational state of the backend's servers.
pub fn show_servers_state(backend: &str) -> String {
    format!("show servers state {backend}")
}

/// Why HAProxy refused a command, read from its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Permission denied`: the socket is not at `level admin`.
    PermissionDenied,
    /// `No such backend.`, `No such proxy.`, `Can't find backend.`
    NoSuchBackend,
    /// `No such server.`
    NoSuchServer,
    /// Anything else that is not the expected answer (first line).
    Other(String),
}

/// The first non-empty line of an answer, if the answer is one of HAProxy's refusals.
fn refusal(answer: &str) -> Option<Refusal> {
    let line = answer.lines().map(str::trim).find(|l| !l.is_empty())?;
    let lower = line.to_ascii_lowercase();
    Some(if lower.starts_with("permission denied") {
        Refusal::PermissionDenied
    } else if lower.starts_with("no such backend")
        || lower.starts_with("no such proxy")
        || lower.starts_with("can't find backend")
    {
        Refusal::NoSuchBackend
    } else if lower.starts_with("no such server") {
        Refusal::NoSuchServer
    } else {
        return None;
    })
}

/// The answer to `set server ... state ...`: empty when it was applied.
pub fn interpret_set(answer: &str) -> Result<(), Refusal> {
    if let Some(r) = refusal(answer) {
        return Err(r);
    }
    match answer.lines().map(str::trim).find(|l| !l.is_empty()) {
        None => Ok(()),
        Some(line) => Err(Refusal::Other(line.to_string())),
    }
}

/// One server's row of `show stat`, the columns `cutover lb` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerStat {
    /// `scur`: sessions currently open on the server.
    pub scur: u64,
    /// `status`: `UP`, `DOWN`, `MAINT`, `DRAIN`, `NOLB`, `UP 1/3`, `no check`, ...
    pub status: String,
    /// `check_status`: `L7OK`, `L4CON`, ... (empty without checks).
    pub check_status: String,
    /// `check_desc`: the check's words, e.g. `Layer4 connection problem`.
    pub check_desc: String,
}

impl ServerStat {
    /// Whether HAProxy's health check says UP (`UP`, or `UP 2/3` while going down) on the
    /// strength of a check that passed (`L4OK`, `L6OK`, `L7OK`, `L7OKC`). A server just out of
    /// maintenance shows `UP` with check status `INI` before its first check has run: that is
    /// not UP yet.
    pub fn is_up(&self) -> bool {
        let passed = matches!(
            self.check_status.trim_start_matches("* "),
            "L4OK" | "L6OK" | "L7OK" | "L7OKC"
        );
        (self.status == "UP" || self.status.starts_with("UP ")) && passed
    }

    /// Whether the server has no health check (`no check`): HAProxy never reports it UP.
    pub fn unchecked(&self) -> bool {
        self.status.eq_ignore_ascii_case("no check")
    }
}

/// Splits one CSV line, honouring double-quoted fields (HAProxy quotes fields with commas).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Why an answer could not be read as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The answer is a refusal.
    Refused(Refusal),
    /// The answer has no header line, or lacks a column we need.
    Malformed(String),
}

/// Rows of a table answer, each a map from column name to value.
type Rows = Vec<HashMap<String, String>>;

/// Parses the answer of `show stat` (CSV, header `# pxname,svname,...`).
fn stat_rows(answer: &str) -> Result<Rows, TableError> {
    if let Some(r) = refusal(answer) {
        return Err(TableError::Refused(r));
    }
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| TableError::Malformed(format!("no CSV header in {:?}", first(answer))))?;
    let columns = csv_fields(header);
    Ok(lines
        .map(|l| columns.iter().cloned().zip(csv_fields(l)).collect())
        .collect())
}

fn first(answer: &str) -> &str {
    answer.lines().next().unwrap_or("").trim()
}

/// The row of `server` in `show stat` of `backend`; `Ok(None)` when the backend has no such
/// server.
pub fn parse_stat(
    answer: &str,
    backend: &str,
    server: &str,
) -> Result<Option<ServerStat>, TableError> {
    let rows = stat_rows(answer)?;
    let Some(row) = rows.iter().find(|r| {
        r.get("pxname").map(String::as_str) == Some(backend)
            && r.get("svname").map(String::as_str) == Some(server)
    }) else {
        return Ok(None);
    };
    let col = |name: &str| {
        row.get(name)
            .cloned()
            .ok_or_else(|| TableError::Malformed(format!("show stat has no column {name}")))
    };
    let scur = col("scur")?;
    Ok(Some(ServerStat {
        scur: scur
            .parse()
            .map_err(|_| TableError::Malformed(format!("scur {scur:?} is not a number")))?,
        status: col("status")?,
        check_status: col("check_status").unwrap_or_default(),
        check_desc: col("check_desc").unwrap_or_default(),
    }))
}

/// A server's admin state: the `srv_admin_state` bits of `show servers state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AdminState(pub u32);

impl AdminState {
    /// Forced maintenance (`set server ... state maint`).
    pub const FMAINT: u32 = 0x01;
    /// Maintenance inherited from a tracked server.
    pub const IMAINT: u32 = 0x02;
    /// The configuration said `disabled` (a marker; see [`AdminState::maint`]).
    pub const CMAINT: u32 = 0x04;
    /// Forced drain (`set server ... state drain`).
    pub const FDRAIN: u32 = 0x08;
    /// Drain inherited from a tracked server.
    pub const IDRAIN: u32 = 0x10;
    /// Maintenance because its address did not resolve.
    pub const RMAINT: u32 = 0x20;
    /// Its FQDN was set at run time (a marker).
    pub const HMAINT: u32 = 0x40;

    /// In maintenance for any reason (HAProxy's `SRV_ADMF_MAINT`). `CMAINT` only records that
    /// the configuration said `disabled` (it stays set after `state ready`), and `HMAINT` that
    /// the FQDN was set at run time: neither keeps traffic away on its own.
    pub fn maint(self) -> bool {
        self.0 & (Self::FMAINT | Self::IMAINT | Self::RMAINT) != 0
    }

    /// Draining for any reason.
    pub fn drain(self) -> bool {
        self.0 & (Self::FDRAIN | Self::IDRAIN) != 0
    }

    /// Whether the state is what `set server ... state wanted` leads to.
    pub fn is(self, wanted: SetState) -> bool {
        match wanted {
            SetState::Maint => self.0 & Self::FMAINT != 0,
            SetState::Drain => self.0 & Self::FDRAIN != 0 && !self.maint(),
            SetState::Ready => !self.maint() && !self.drain(),
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.maint(), self.drain()) {
            (false, false) => f.write_str("ready"),
            (false, true) => f.write_str("drain"),
            (true, false) => f.write_str("maint"),
            (true, true) => f.write_str("maint+drain"),
        }
    }
}

/// A server's operational state, `srv_op_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    /// 0: down.
    Stopped,
    /// 1: coming up (slowstart).
    Starting,
    /// 2: up.
    Running,
    /// 3: going down.
    Stopping,
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpState::Stopped => "stopped",
            OpState::Starting => "starting",
            OpState::Running => "running",
            OpState::Stopping => "stopping",
        })
    }
}

/// One server's row of `show servers state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServerState {
    /// `srv_admin_state`.
    pub admin: AdminState,
    /// `srv_op_state`.
    pub op: OpState,
}

/// The row of `server` in `show servers state BACKEND` (a version line, a `# be_id be_name ...`
/// header, space-separated rows); `Ok(None)` when the backend has no such server.
pub fn parse_servers_state(answer: &str, server: &str) -> Result<Option<ServerState>, TableError> {
    if let Some(r) = refusal(answer) {
        return Err(TableError::Refused(r));
    }
    let mut lines = answer
        .lines()
        .filter(|l| !l.trim().is_empty())
        .skip_while(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines
        .next()
        .map(|l| l.trim_start_matches('#').split_whitespace().collect())
        .ok_or_else(|| TableError::Malformed(format!("no header in {:?}", first(answer))))?;
    let index = |name: &str| {
        header.iter().position(|c| *c == name).ok_or_else(|| {
            TableError::Malformed(format!("show servers state has no column {name}"))
        })
    };
    let (name_i, admin_i, op_i) = (
        index("srv_name")?,
        index("srv_admin_state")?,
        index("srv_op_state")?,
    );
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.get(name_i) != Some(&server) {
            continue;
        }
        let number = |i: usize, name: &str| {
            cells
                .get(i)
                .and_then(|c| c.parse::<u32>().ok())
                .ok_or_else(|| TableError::Malformed(format!("{name} of {server} is not a number")))
        };
        let op = match number(op_i, "srv_op_state")? {
            0 => OpState::Stopped,
            1 => OpState::Starting,
            2 => OpState::Running,
            3 => OpState::Stopping,
            n => {
                return Err(TableError::Malformed(format!(
                    "srv_op_state {n} is unknown"
                )));
            }
        };
        return Ok(Some(ServerState {
            admin: AdminState(number(admin_i, "srv_admin_state")?),
            op,
        }));
    }
    Ok(None)
}

/// Why a server is a problem for `status`: it is in rotation (admin state ready) but its
/// health check does not pass, so HAProxy sends it nothing.
pub fn rotation_problem(server: &str, admin: AdminState, stat: &ServerStat) -> Option<String> {
    if !admin.is(SetState::Ready) || stat.is_up() || stat.unchecked() {
        return None;
    }
    Some(format!(
        "{server} is in rotation but {} ({} {})",
        stat.status, stat.check_status, stat.check_desc
    ))
}

/// What to do next while a drain waits for sessions to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// Poll again after this long.
    Wait(Duration),
    /// Stop waiting: set `maint` now.
    Done {
        /// Sessions still open (0 when the drain completed).
        open: u64,
        /// Whether the timeout ended the wait.
        timed_out: bool,
    },
}

/// Decides, from the server's `scur` and the time since the drain started, whether to go on
/// waiting.
pub fn drain_step(scur: u64, elapsed: Duration, timeout: Duration, poll: Duration) -> DrainStep {
    if scur == 0 {
        return DrainStep::Done {
            open: 0,
            timed_out: false,
        };
    }
    if elapsed >= timeout {
        return DrainStep::Done {
            open: scur,
            timed_out: true,
        };
    }
    DrainStep::Wait(poll.min(timeout - elapsed))
}

/// What to do next while `ready` waits for the health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyStep {
    /// Poll again after this long.
    Wait(Duration),
    /// The health check says UP.
    Up,
    /// The server has no health check: HAProxy sends it traffic unchecked.
    Unchecked,
    /// It is still not UP at the timeout.
    TimedOut,
}

/// Decides, from the server's `show stat` row and the time since it was set ready, whether to
/// go on waiting.
pub fn ready_step(
    stat: &ServerStat,
    elapsed: Duration,
    timeout: Duration,
    poll: Duration,
) -> ReadyStep {
    if stat.is_up() {
        ReadyStep::Up
    } else if stat.unchecked() {
        ReadyStep::Unchecked
    } else if elapsed >= timeout {
        ReadyStep::TimedOut
    } else {
        ReadyStep::Wait(poll.min(timeout - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `show stat web 4 -1` of HAProxy 2.6, shortened to the first columns plus a reordered
    /// tail: parsing goes by name, so the order must not matter.
    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,check_desc,check_status\n\
web,old,0,0,3,5,,10,DRAIN,\"Layer7 check passed, fine\",L7OK\n\
web,new,0,0,0,0,,0,DOWN,Layer4 connection problem,L4CON\n\n";

    #[test]
    fn stat_by_column_name() {
        let old = parse_stat(STAT, "web", "old").unwrap().unwrap();
        assert_eq!(old.scur, 3);
        assert_eq!(old.status, "DRAIN");
        assert_eq!(old.check_status, "L7OK");
        assert_eq!(old.check_desc, "Layer7 check passed, fine");
        let new = parse_stat(STAT, "web", "new").unwrap().unwrap();
        assert!(!new.is_up());
        assert_eq!(parse_stat(STAT, "web", "gone").unwrap(), None);
        assert_eq!(parse_stat(STAT, "api", "old").unwrap(), None);
        assert_eq!(
            parse_stat("No such proxy.\n\n", "x", "old"),
            Err(TableError::Refused(Refusal::NoSuchBackend))
        );
        assert!(matches!(
            parse_stat("# pxname,svname,status\nweb,old,UP\n", "web", "old"),
            Err(TableError::Malformed(m)) if m.contains("scur")
        ));
        assert!(matches!(
            parse_stat("hello\n", "web", "old"),
            Err(TableError::Malformed(_))
        ));
    }

    #[test]
    fn servers_state_by_column_name() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
3 web 1 old 127.0.0.1 2 8 1\n3 web 2 new 127.0.0.1 0 5 1\n\n";
        let old = parse_servers_state(answer, "old").unwrap().unwrap();
        assert_eq!(old.op, OpState::Running);
        assert!(old.admin.is(SetState::Drain));
        assert_eq!(old.admin.to_string(), "drain");
        let new = parse_servers_state(answer, "new").unwrap().unwrap();
        assert!(new.admin.is(SetState::Maint)); // `disabled` in the config: FMAINT + CMAINT
        assert_eq!(new.admin.to_string(), "maint");
        assert_eq!(parse_servers_state(answer, "x").unwrap(), None);
        assert_eq!(
            parse_servers_state("Can't find backend.\n\n", "old"),
            Err(TableError::Refused(Refusal::NoSuchBackend))
        );
    }

    #[test]
    fn admin_states() {
        let cases = [
            (0, SetState::Ready, true),
            (0, SetState::Drain, false),
            (AdminState::FDRAIN, SetState::Drain, true),
            (AdminState::FDRAIN, SetState::Ready, false),
            (
                AdminState::FMAINT | AdminState::FDRAIN,
                SetState::Drain,
                false,
            ),
            (AdminState::FMAINT, SetState::Maint, true),
            (AdminState::CMAINT, SetState::Maint, false),
            (AdminState::CMAINT, SetState::Ready, true), // what `state ready` leaves
            (
                AdminState::FMAINT | AdminState::CMAINT,
                SetState::Ready,
                false,
            ),
            (AdminState::IMAINT, SetState::Ready, false),
        ];
        for (bits, state, want) in cases {
            assert_eq!(AdminState(bits).is(state), want, "{bits:#x} is {state}");
        }
    }

    #[test]
    fn set_answers() {
        assert_eq!(interpret_set("\n"), Ok(()));
        assert_eq!(interpret_set(""), Ok(()));
        assert_eq!(
            interpret_set("Permission denied\n\n"),
            Err(Refusal::PermissionDenied)
        );
        assert_eq!(
            interpret_set("No such backend.\n\n"),
            Err(Refusal::NoSuchBackend)
        );
        assert_eq!(
            interpret_set("No such server.\n\n"),
            Err(Refusal::NoSuchServer)
        );
        assert_eq!(
            interpret_set("'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n"),
            Err(Refusal::Other(
                "'set server <srv> state' expects 'ready', 'drain' and 'maint'.".into()
            ))
        );
        assert_eq!(
            set_state("web", "old", SetState::Drain),
            "set server web/old state drain"
        );
    }

    #[test]
    fn rotation_problems() {
        let stat = |status: &str, check: &str| ServerStat {
            scur: 0,
            status: status.into(),
            check_status: check.into(),
            check_desc: "x".into(),
        };
        let ready = AdminState(0);
        assert_eq!(rotation_problem("a", ready, &stat("UP", "L7OK")), None);
        assert_eq!(rotation_problem("a", ready, &stat("no check", "")), None);
        assert_eq!(
            rotation_problem("a", AdminState(AdminState::FMAINT), &stat("MAINT", "")),
            None
        );
        assert_eq!(
            rotation_problem("a", ready, &stat("DOWN", "L4CON")).as_deref(),
            Some("a is in rotation but DOWN (L4CON x)")
        );
    }

    #[test]
    fn drain_decisions() {
        let (t, p) = (Duration::from_secs(10), Duration::from_millis(200));
        let s = Duration::from_secs;
        assert_eq!(
            drain_step(0, s(0), t, p),
            DrainStep::Done {
                open: 0,
                timed_out: false
            }
        );
        assert_eq!(drain_step(2, s(1), t, p), DrainStep::Wait(p));
        assert_eq!(
            drain_step(2, Duration::from_millis(9_900), t, p),
            DrainStep::Wait(Duration::from_millis(100))
        );
        assert_eq!(
            drain_step(2, s(10), t, p),
            DrainStep::Done {
                open: 2,
                timed_out: true
            }
        );
        assert_eq!(
            drain_step(0, s(11), t, p),
            DrainStep::Done {
                open: 0,
                timed_out: false
            }
        );
        // drain_timeout = 0: straight to maint, reporting what is open.
        assert_eq!(
            drain_step(1, s(0), s(0), p),
            DrainStep::Done {
                open: 1,
                timed_out: true
            }
        );
    }

    #[test]
    fn ready_decisions() {
        let (t, p) = (Duration::from_secs(5), Duration::from_millis(200));
        let checked = |status: &str, check: &str| ServerStat {
            scur: 0,
            status: status.into(),
            check_status: check.into(),
            check_desc: String::new(),
        };
        let stat = |status: &str| checked(status, "L4CON");
        let z = Duration::ZERO;
        assert_eq!(ready_step(&checked("UP", "L7OK"), z, t, p), ReadyStep::Up);
        assert_eq!(
            ready_step(&checked("UP 1/2", "L4OK"), z, t, p),
            ReadyStep::Up
        );
        // Out of maint, before the first check: UP by default, not by a check.
        assert_eq!(
            ready_step(&checked("UP", "INI"), z, t, p),
            ReadyStep::Wait(p)
        );
        assert_eq!(
            ready_step(&stat("no check"), Duration::ZERO, t, p),
            ReadyStep::Unchecked
        );
        assert_eq!(
            ready_step(&stat("DOWN"), Duration::from_secs(1), t, p),
            ReadyStep::Wait(p)
        );
        assert_eq!(ready_step(&stat("DOWN 1/2"), t, t, p), ReadyStep::TimedOut);
        assert_eq!(ready_step(&stat("MAINT"), t, t, p), ReadyStep::TimedOut);
    }
}
