//! What the watch decides without IO, and what it looks up: [`Batcher`] (debounce, with
//! `now` passed in) and [`changed_for`] (a batch's paths, their ancestors and new
//! directories' subdirectories, as the [`scan::Changed`] a partial refresh looks at).

use super::*;

/// Dirty paths and when their batch is due. Sans-IO: `now` is always passed in.
#[derive(Debug, Default)]
pub struct Batcher {
    /// Paths relative to the root that changed.
    pub(super) paths: BTreeSet<Vec<u8>>,
    /// The whole tree must be rescanned (overflow, safety rescan, final sync).
    full: bool,
    /// The first change of this batch.
    first: Option<Instant>,
    /// The latest change of this batch.
    last: Option<Instant>,
    debounce: Duration,
}

/// A batch taken from a [`Batcher`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Changed paths, relative to the root.
    pub paths: BTreeSet<Vec<u8>>,
    /// Rescan everything.
    pub full: bool,
    /// When its first change was seen.
    pub since: Option<Instant>,
}

impl Batcher {
    /// A batcher that waits `debounce` of quiet before a batch is due.
    pub fn new(debounce: Duration) -> Batcher {
        Batcher {
            debounce,
            ..Batcher::default()
        }
    }

    /// A change at `rel` (relative to the root; empty = the root itself).
    pub fn note(&mut self, rel: Vec<u8>, now: Instant) {
        self.paths.insert(rel);
        self.touch(now);
    }

    /// Everything must be rescanned.
    pub fn note_full(&mut self, now: Instant) {
        self.full = true;
        self.touch(now);
    }

    pub(super) fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the batch is due: `debounce` after the latest change, but no later than ten
    /// debounce windows (at least 200 ms) after the first, so that a tree that never goes
    /// quiet is still pushed. `None` when nothing is dirty.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        let cap = (self.debounce * 10).max(Duration::from_millis(200));
        Some((last + self.debounce).min(first + cap))
    }

    /// Whether anything is dirty.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Dirty paths (for `status`'s pending count).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// When the oldest unbatched change was seen.
    pub fn since(&self) -> Option<Instant> {
        self.first
    }

    /// Takes the batch, leaving the batcher empty.
    pub fn take(&mut self) -> Batch {
        let b = Batch {
            paths: std::mem::take(&mut self.paths),
            full: self.full,
            since: self.first,
        };
        self.full = false;
        self.first = None;
        self.last = None;
        b
    }

    /// Puts a batch back (its push failed), merged with what came since.
    pub fn restore(&mut self, b: Batch) {
        self.paths.extend(b.paths);
        self.full |= b.full;
        if let Some(t) = b.since {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last.get_or_insert(t);
        }
    }
}

/// What a rescan limited to `paths` must look at ([`Changed`]): each path as an entry, and
/// every directory on the way to it as a listing, so that the walk reaches it. `is_dir`
/// says whether a path is now a directory and, if so, lists its subdirectories (a
/// directory created or moved in with contents: every directory in it is new to the
/// manifest and must be listed).
pub fn changed_for(
    paths: &BTreeSet<Vec<u8>>,
    mut subdirs: impl FnMut(&[u8]) -> Option<Vec<Vec<u8>>>,
) -> Changed {
    let mut c = Changed::default();
    for p in paths {
        if p.is_empty() {
            continue;
        }
        for (i, &b) in p.iter().enumerate() {
            if b == b'/' {
                c.dirs.insert(p[..i].to_vec());
            }
        }
        c.entries.insert(p.clone());
        if let Some(dirs) = subdirs(p) {
            c.dirs.insert(p.clone());
            c.dirs.extend(dirs);
        }
    }
    c
}

/// The directories under `rel` in `root` (itself excluded), relative to the root; `None` if
/// `rel` is not a directory now.
pub(super) fn subdirs_of(root: &Path, rel: &[u8]) -> Option<Vec<Vec<u8>>> {
    let top = root.join(std::ffi::OsStr::from_bytes(rel));
    if !std::fs::symlink_metadata(&top).ok()?.is_dir() {
        return None;
    }
    let mut out = Vec::new();
    let mut stack = vec![top];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                if let Ok(r) = p.strip_prefix(root) {
                    out.push(r.as_os_str().as_bytes().to_vec());
                }
                stack.push(p);
            }
        }
    }
    Some(out)
}
