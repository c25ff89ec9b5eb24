//! The journal of a `cutover run`: append-only JSON lines, fsynced after every line.
//!
//! The first line is a [`Header`] (the runbook and the planned steps); every other line is
//! one [`plan::Event`](crate::plan::Event). The driver writes an event *before* it acts
//! (`do-started`) and again with the result (`do-ok` with what it observed), so that after a
//! SIGKILL anywhere the journal says every step that may have taken effect, and what the
//! undo needs (positions, previous DNS answers, previous server states).
//!
//! A line cut short by a crash in the middle of a write (no final newline, or not JSON) is
//! *torn*: its event was never durable, so it is cut off the file and reported; a bad line
//! anywhere else is corruption and an error. [`parse`] decides this without IO. One journal
//! file per runbook path, held under an exclusive `flock` while a command uses it, so two
//! `cutover run`s of one runbook cannot interleave.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::plan::{Event, Step};

/// The journal format's version.
pub const VERSION: u32 = 1;

/// Journal errors; each names the journal file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing, syncing or locking failed.
    #[error("journal {path}: {what}: {error}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        error: std::io::Error,
    },
    /// Another `cutover` holds the journal.
    #[error("journal {path}: another cutover is using it (it is locked)")]
    Locked {
        /// The journal.
        path: PathBuf,
    },
    /// A line other than the last is not a journal line.
    #[error("journal {path}: line {line} is corrupt: {message}")]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The first line of a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`VERSION`].
    pub cutover_journal: u32,
    /// The runbook's path, as given.
    pub runbook: String,
    /// The steps planned, in order: a rollback refuses a runbook that plans others.
    pub steps: Vec<Step>,
    /// When the run started, milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// A parsed journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// Its header.
    pub header: Header,
    /// Its events, in order.
    pub events: Vec<Event>,
    /// The byte length of the durable part (everything up to the last complete line).
    pub durable_len: u64,
    /// The torn last line, if there was one (cut off).
    pub torn: Option<String>,
}

/// Parses a journal's text. `Ok(None)` for an empty journal (or one whose only line, the
/// header, is torn: nothing was done).
pub fn parse(path: &Path, text: &str) -> Result<Option<Contents>, JournalError> {
    let corrupt = |line: usize, message: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut header: Option<Header> = None;
    let mut events = Vec::new();
    let mut offset = 0usize;
    let mut torn = None;
    let pieces: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let Some(line) = piece.strip_suffix('\n') else {
            // Only the last piece can lack its newline: a write cut short.
            torn = Some((*piece).to_string());
            break;
        };
        let parsed = match &header {
            None => serde_json::from_str::<Header>(line)
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    if h.cutover_journal == VERSION {
                        header = Some(h);
                        Ok(())
                    } else {
                        Err(format!(
                            "journal version {}, not {VERSION}",
                            h.cutover_journal
                        ))
                    }
                }),
            Some(_) => serde_json::from_str::<Event>(line)
                .map(|e| events.push(e))
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(()) => offset += piece.len(),
            // A last line that is not JSON: what a crash can leave (zeros, a half block).
            Err(_) if last => torn = Some(line.to_string()),
            Err(m) => return Err(corrupt(i + 1, m)),
        }
    }
    Ok(header.map(|header| Contents {
        header,
        events,
        durable_len: offset as u64,
        torn,
    }))
}

/// An open, locked journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
}

/// The default state directory: `/var/lib/cutover` for root, else the user's data directory
/// (`$XDG_DATA_HOME/cutover`, `~/.local/share/cutover`).
pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/cutover");
    }
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cutover")
}

/// The journal file of `runbook` in `state_dir`: its file stem and a hash of its absolute
/// path, so that two runbooks of the same name do not share one.
pub fn path_for(state_dir: &Path, runbook: &Path) -> PathBuf {
    let abs = std::path::absolute(runbook).unwrap_or_else(|_| runbook.to_path_buf());
    let digest = sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let stem = runbook
        .file_stem()
        .map_or("runbook".into(), |s| s.to_string_lossy().into_owned());
    state_dir.join(format!("{stem}-{hex}.journal"))
}

impl Journal {
    /// Opens (creating it and its directory if missing) and locks the journal at `path`, and
    /// reads what it holds. A torn last line is cut off the file before this returns.
    pub fn open(path: &Path) -> Result<(Journal, Option<Contents>), JournalError> {
        let io = |what: &'static str| {
            let path = path.to_path_buf();
            move |error| JournalError::Io { path, what, error }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io("open"))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(JournalError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io("lock")(e.into())),
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io("read"))?;
        let contents = parse(path, &text)?;
        let durable = contents.as_ref().map_or(0, |c| c.durable_len);
        if durable != text.len() as u64 {
            file.set_len(durable).map_err(io("cut the torn line"))?;
            file.sync_all().map_err(io("fsync"))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io("seek"))?;
        Ok((
            Journal {
                file,
                path: path.to_path_buf(),
            },
            contents,
        ))
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the header of a new run. The file must be empty.
    pub fn start(&mut self, header: &Header) -> Result<(), JournalError> {
        self.line(header)?;
        // The file is new: make its directory entry durable too.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|error| JournalError::Io {
                    path: self.path.clone(),
                    what: "fsync its directory",
                    error,
                })?;
        }
        Ok(())
    }

    /// Appends one event and fsyncs.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        self.line(event)
    }

    fn line<T: Serialize>(&mut self, value: &T) -> Result<(), JournalError> {
        let mut text = serde_json::to_string(value).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            what: "encode",
            error: std::io::Error::other(e),
        })?;
        text.push('\n');
        let io = |what| {
            let path = self.path.clone();
            move |error| JournalError::Io { path, what, error }
        };
        self.file.write_all(text.as_bytes()).map_err(io("append"))?;
        self.file.sync_data().map_err(io("fsync"))
    }

    /// Moves a finished journal aside (`NAME.journal` → `NAME.journal.done-MS`) so that the
    /// next run starts a new one; keeps the lock until the rename is durable.
    pub fn archive(self, now_ms: u64) -> Result<PathBuf, JournalError> {
        let to = self.path.with_extension(format!("journal.done-{now_ms}"));
        std::fs::rename(&self.path, &to).map_err(|error| JournalError::Io {
            path: self.path.clone(),
            what: "archive",
            error,
        })?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Phase;

    fn header() -> Header {
        Header {
            cutover_journal: VERSION,
            runbook: "rb.toml".into(),
            steps: vec![Step::Drain, Step::Promote],
            started_ms: 1,
        }
    }

    fn event(step: Step, phase: Phase) -> Event {
        Event {
            step: Some(step),
            phase,
            time_ms: 2,
            reason: None,
            observed: serde_json::json!({"before": "maint"}),
        }
    }

    fn text(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn lines() -> Vec<String> {
        vec![
            serde_json::to_string(&header()).unwrap(),
            serde_json::to_string(&event(Step::Drain, Phase::DoStarted)).unwrap(),
            serde_json::to_string(&event(Step::Drain, Phase::DoOk)).unwrap(),
        ]
    }

    #[test]
    fn parses_a_whole_journal() {
        let t = text(&lines());
        let c = parse(Path::new("j"), &t).unwrap().unwrap();
        assert_eq!(c.header, header());
        assert_eq!(c.events.len(), 2);
        assert_eq!(c.events[1], event(Step::Drain, Phase::DoOk));
        assert_eq!(c.durable_len, t.len() as u64);
        assert_eq!(c.torn, None);
        assert_eq!(parse(Path::new("j"), "").unwrap(), None);
    }

    /// Every cut of the last line, at every byte, is torn and dropped; the rest stays.
    #[test]
    fn a_torn_last_line_at_any_byte_is_cut_off() {
        let all = lines();
        let whole = text(&all[..2]);
        for cut in 0..=all[2].len() {
            let t = format!("{whole}{}", &all[2][..cut]);
            let c = parse(Path::new("j"), &t).unwrap().unwrap();
            assert_eq!(c.events.len(), 1, "cut at {cut}");
            assert_eq!(c.durable_len, whole.len() as u64, "cut at {cut}");
            assert_eq!(c.torn.is_some(), cut > 0, "cut at {cut}");
        }
        // A torn header: nothing was journaled.
        for cut in 1..all[0].len() {
            assert_eq!(parse(Path::new("j"), &all[0][..cut]).unwrap(), None);
        }
    }

    #[test]
    fn a_bad_line_in_the_middle_is_corruption() {
        let mut l = lines();
        l[1] = "{\"step\":".into();
        let err = parse(Path::new("/x/j"), &text(&l)).unwrap_err();
        assert!(err.to_string().contains("/x/j: line 2 is corrupt"), "{err}");
    }

    #[test]
    fn open_cuts_the_torn_line_appends_fsyncs_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/rb.journal");
        {
            let (mut j, c) = Journal::open(&path).unwrap();
            assert!(c.is_none());
            j.start(&header()).unwrap();
            j.append(&event(Step::Drain, Phase::DoStarted)).unwrap();
            // A second open while the first holds the lock is refused.
            assert!(matches!(
                Journal::open(&path),
                Err(JournalError::Locked { .. })
            ));
        }
        // Simulate a write cut short by SIGKILL.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"step\":\"drain\",\"pha").unwrap();
        drop(f);
        let (mut j, c) = Journal::open(&path).unwrap();
        let c = c.unwrap();
        assert_eq!(c.events.len(), 1);
        assert!(c.torn.is_some());
        j.append(&event(Step::Drain, Phase::DoOk)).unwrap();
        drop(j);
        let (j, c) = Journal::open(&path).unwrap();
        let c = c.unwrap();
        assert_eq!(c.torn, None);
        assert_eq!(c.events.len(), 2);
        let archived = j.archive(7).unwrap();
        assert!(archived.to_string_lossy().ends_with("rb.journal.done-7"));
        assert!(!path.exists());
    }

    #[test]
    fn journal_paths_differ_by_directory() {
        let a = path_for(Path::new("/s"), Path::new("/a/rb.toml"));
        let b = path_for(Path::new("/s"), Path::new("/b/rb.toml"));
        assert_ne!(a, b);
        assert!(a.to_string_lossy().starts_with("/s/rb-"));
    }
}
