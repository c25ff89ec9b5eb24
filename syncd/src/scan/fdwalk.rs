//! The walk without `.gitignore` rules (every walk but `--filter-gitignore`'s): each
//! directory is opened relative to its parent's descriptor with `O_NOFOLLOW`, and each
//! entry is `statx`ed relative to its directory, so that no lookup walks a full path (a
//! directory swapped for a symlink during the walk is reported, not followed). Each
//! directory is one job on the rayon pool (jobs, not recursion: a tree of any depth walks
//! in constant stack); its entries are sorted by name, so that putting each
//! subdirectory's listing after its own entry gives the tree in component order, as the
//! tree build needs it, without a sort of the whole tree.

use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, StatxFlags};

use super::walk::WalkOut;
use super::*;
use crate::lock::lock;

/// What one directory held: its entries in name order, and for each subdirectory walked
/// the index of its entry and the number of its own listing.
#[derive(Default)]
struct Listing {
    items: Vec<Walked>,
    subs: Vec<(usize, usize)>,
    warnings: Vec<Warning>,
    parts: Vec<Vec<u8>>,
}

/// One directory entry as read, before it is looked at.
struct Named {
    /// Where its name is in the directory's buffer of names.
    at: usize,
    len: usize,
    ty: FileType,
}

impl Named {
    fn name<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.at..self.at + self.len]
    }
}

/// The buffer `getdents64` fills per directory.
const DIR_BUF: usize = 32 << 10;

/// What every job of a walk shares.
struct Walk<'a> {
    opts: &'a ScanOptions,
    /// The state directory, relative to the root.
    exclude: Option<Vec<u8>>,
    /// Numbers for the listings (the root's is 0).
    next: AtomicU64,
    /// The listings, by number, as their jobs finish.
    done: Mutex<Vec<(usize, Listing)>>,
}

/// A directory to walk: opened from its parent's descriptor, or the root's own.
struct Job {
    id: usize,
    open: Open,
    abs: PathBuf,
    rel: Vec<u8>,
}

enum Open {
    Root(OwnedFd),
    Child(Arc<OwnedFd>),
}

/// Walks the tree at `root` (see the module's doc).
pub(super) fn walk(root: &Path, opts: &ScanOptions) -> Result<WalkOut, ScanError> {
    let root_meta = std::fs::metadata(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ScanError::Root {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    let exclude = opts
        .exclude_path
        .as_ref()
        .and_then(|p| p.strip_prefix(root).ok())
        .map(|rel| rel.as_os_str().as_bytes().to_vec())
        .filter(|rel| !rel.is_empty());
    let w = Walk {
        opts,
        exclude,
        next: AtomicU64::new(1),
        done: Mutex::new(Vec::new()),
    };
    let job = Job {
        id: 0,
        open: Open::Root(fd),
        abs: root.to_path_buf(),
        rel: Vec::new(),
    };
    rayon::scope(|s| list(s, job, &w));
    let mut done = w.done.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut listings: Vec<Option<Listing>> = Vec::new();
    listings.resize_with(done.len(), || None);
    for (id, l) in done.drain(..) {
        if let Some(slot) = listings.get_mut(id) {
            *slot = Some(l);
        }
    }
    let (walked, warnings, parts) = flatten(listings);
    Ok((walked, warnings, root_meta, parts))
}

/// Reads, sorts and looks at one directory, and starts a job for each subdirectory.
fn list<'s>(s: &rayon::Scope<'s>, job: Job, w: &'s Walk<'s>) {
    let Job { id, open, abs, rel } = job;
    let mut out = Listing::default();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match open {
        Open::Root(fd) => Ok(fd),
        // The parent's descriptor is let go as soon as this one is open.
        Open::Child(parent) => rustix::fs::openat(&*parent, file_name(&rel), flags, Mode::empty()),
    };
    let read = opened.and_then(|fd| {
        // The names go into one buffer, each entry an index into it: no allocation per
        // entry until its path is made.
        let (mut bytes, mut names) = (Vec::new(), Vec::new());
        let mut buf = vec![std::mem::MaybeUninit::uninit(); DIR_BUF];
        let mut dir = RawDir::new(&fd, &mut buf);
        while let Some(entry) = dir.next() {
            let e = entry?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(Named {
                    at: bytes.len(),
                    len: name.len(),
                    ty: e.file_type(),
                });
                bytes.extend_from_slice(name);
            }
        }
        Ok((fd, bytes, names))
    });
    match read {
        Ok((dir_fd, bytes, mut names)) => {
            names.sort_unstable_by(|a, b| a.name(&bytes).cmp(b.name(&bytes)));
            // Each entry is looked at (statx relative to the directory), in parallel in
            // a large directory.
            let looked: Vec<Looked> = names
                .par_iter()
                .with_min_len(64)
                .map(|n| look(&dir_fd, &abs, &rel, n.name(&bytes), n.ty, w))
                .collect();
            let dir_fd = Arc::new(dir_fd);
            for l in looked {
                match l {
                    Looked::Entry { walked, walk_into } => {
                        if walk_into {
                            let sub = w.next.fetch_add(1, Ordering::Relaxed) as usize;
                            out.subs.push((out.items.len(), sub));
                            let job = Job {
                                id: sub,
                                open: Open::Child(dir_fd.clone()),
                                abs: abs.join(OsStr::from_bytes(file_name(&walked.path))),
                                rel: walked.path.clone(),
                            };
                            s.spawn(move |s| list(s, job, w));
                        }
                        out.items.push(walked);
                    }
                    Looked::Part(path) => out.parts.push(path),
                    Looked::Warning(warning) => out.warnings.push(warning),
                    Looked::Left => {}
                }
            }
        }
        Err(e) => out.warnings.push(io_warning(abs, e)),
    }
    lock(&w.done).push((id, out));
}

/// One listing being put in order: its entries left and its subdirectories left (both
/// reversed, to pop), and the index of the next entry.
type Flattening = (Vec<Walked>, Vec<(usize, usize)>, usize);

/// Puts the listings in component order: each directory's entries, each subdirectory's
/// right after its own entry (an explicit stack: the tree's depth is not the call
/// stack's).
fn flatten(mut listings: Vec<Option<Listing>>) -> (Vec<Walked>, Vec<Warning>, Vec<Vec<u8>>) {
    let (mut walked, mut warnings, mut parts) = (Vec::new(), Vec::new(), Vec::new());
    let mut stack = Vec::new();
    let mut open = |id: usize, stack: &mut Vec<Flattening>| {
        if let Some(l) = listings.get_mut(id).and_then(Option::take) {
            warnings.extend(l.warnings);
            parts.extend(l.parts);
            let (mut items, mut subs) = (l.items, l.subs);
            items.reverse();
            subs.reverse();
            stack.push((items, subs, 0));
        }
    };
    open(0, &mut stack);
    while let Some((items, subs, next)) = stack.last_mut() {
        let Some(w) = items.pop() else {
            stack.pop();
            continue;
        };
        let i = *next;
        *next += 1;
        walked.push(w);
        // A subdirectory's listing comes right after its entry, before the next one.
        let sub = subs.last().filter(|(j, _)| *j == i).map(|&(_, sub)| sub);
        if let Some(sub) = sub {
            subs.pop();
            open(sub, &mut stack);
        }
    }
    (walked, warnings, parts)
}

/// What looking at one entry found.
enum Looked {
    /// An entry of the tree; a directory to walk into if `walk_into`.
    Entry { walked: Walked, walk_into: bool },
    /// A part file of this home (left out of the tree, reported).
    Part(Vec<u8>),
    /// An entry that could not be looked at, or a special file (skipped).
    Warning(Warning),
    /// Left out by the rules (the state directory, a filter rule).
    Left,
}

fn look(dir: &OwnedFd, abs: &Path, parent: &[u8], name: &[u8], ty: FileType, w: &Walk) -> Looked {
    let path = join(parent, name);
    if w.exclude.as_deref() == Some(path.as_slice()) {
        return Looked::Left;
    }
    let opts = w.opts;
    let stat = || {
        rustix::fs::statx(
            dir,
            name,
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_SYNC_AS_STAT,
            StatxFlags::BASIC_STATS,
        )
    };
    // The type from the listing; a filesystem that does not give it is asked.
    let mut looked = None;
    let ty = match ty {
        FileType::Unknown => match stat() {
            Ok(st) => FileType::from_raw_mode(looked.insert(st).stx_mode.into()),
            Err(e) => return Looked::Warning(io_warning(abs.join(OsStr::from_bytes(name)), e)),
        },
        t => t,
    };
    if !opts.filter.is_empty() && opts.filter.excludes(&path, ty == FileType::Directory) {
        return Looked::Left;
    }
    if let Some(key) = &opts.parts
        && key.is_part(name)
    {
        return Looked::Part(path);
    }
    if let Some(changed) = &opts.changed_only
        && !changed.dirs.contains(&path)
        && !changed.entries.contains(&path)
        && let Some(kind) = kind_of_type(ty)
    {
        // Untouched: its kind from the listing, its hash from the store.
        return Looked::Entry {
            walked: Walked::kept(path, kind),
            walk_into: false,
        };
    }
    let st = match looked.map_or_else(stat, Ok) {
        Ok(st) => st,
        Err(e) => return Looked::Warning(io_warning(abs.join(OsStr::from_bytes(name)), e)),
    };
    let ty = FileType::from_raw_mode(st.stx_mode.into());
    let Some(kind) = kind_of_type(ty) else {
        return Looked::Warning(Warning {
            path: abs.join(OsStr::from_bytes(name)),
            message: format!("skipped {}", special_name(ty)),
            skipped_special: true,
        });
    };
    let ts = |t: rustix::fs::StatxTimestamp| crate::fsmeta::ns(t.tv_sec, t.tv_nsec.into());
    Looked::Entry {
        walked: Walked {
            path,
            kind,
            mode: u32::from(st.stx_mode) & 0o7777,
            stat: Stat {
                size: st.stx_size,
                mtime_ns: ts(st.stx_mtime),
                ctime_ns: ts(st.stx_ctime),
                ino: st.stx_ino,
            },
            owner: (st.stx_uid, st.stx_gid),
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            nlink: st.stx_nlink.into(),
            kept: false,
        },
        walk_into: kind == Kind::Dir,
    }
}

/// `path` could not be looked at.
fn io_warning(path: PathBuf, e: rustix::io::Errno) -> Warning {
    Warning {
        path,
        message: std::io::Error::from(e).to_string(),
        skipped_special: false,
    }
}

/// What a special file (not a directory, file or symlink) of type `ty` is called in the
/// warning that says it was skipped.
pub(super) fn special_name(ty: FileType) -> &'static str {
    match ty {
        FileType::Socket => "socket",
        FileType::Fifo => "fifo",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        _ => "special file",
    }
}

/// The manifest kind of a listed type; `None` for sockets, fifos and devices.
pub(super) fn kind_of_type(ty: FileType) -> Option<Kind> {
    match ty {
        FileType::Directory => Some(Kind::Dir),
        FileType::RegularFile => Some(Kind::File),
        FileType::Symlink => Some(Kind::Symlink),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn paths(w: &[Walked]) -> Vec<String> {
        w.iter()
            .map(|w| String::from_utf8_lossy(&w.path).into_owned())
            .collect()
    }

    /// A tree whose names sort differently by bytes and by component (`a!` and `a.b`
    /// before `a/…` by bytes, after it by component), with a non-UTF-8 name, a symlink to
    /// a directory, a fifo, a part file and an excluded state directory.
    fn tricky() -> (tempfile::TempDir, ScanOptions) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["a/b/c", "a!", "a.b", "z/y", "state/x", "m"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "a/b/c/f",
            "a/0",
            "a!/f",
            "a.b/f",
            "a-",
            "z/y/f",
            "state/x/f",
            "m/f",
        ] {
            fs::write(r.join(f), f).unwrap();
        }
        fs::write(r.join(OsStr::from_bytes(b"m/\xff\xfe")), b"x").unwrap();
        std::os::unix::fs::symlink(r.join("z"), r.join("a/link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("m/fifo"),
            FileType::Fifo,
            Mode::RUSR | Mode::WUSR,
            0,
        )
        .unwrap();
        let home = tempfile::tempdir().unwrap();
        let key = crate::partname::PartKey::load(home.path()).unwrap();
        let part = key.name(b"0", crate::partname::Temp::File);
        fs::write(r.join("a").join(OsStr::from_bytes(&part)), b"p").unwrap();
        let opts = ScanOptions {
            exclude_path: Some(r.join("state")),
            parts: Some(key),
            ..ScanOptions::default()
        };
        (t, opts)
    }

    #[test]
    fn the_walk_is_in_component_order_and_agrees_with_the_ignore_walk() {
        let (t, opts) = tricky();
        let root = t.path().canonicalize().unwrap();
        let (walked, warnings, _, parts) = walk(&root, &opts).unwrap();
        let mut sorted = paths(&walked);
        sorted.sort_by(|a, b| component_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(paths(&walked), sorted, "not in component order");
        assert!(paths(&walked).contains(&"a/b/c/f".to_string()));
        assert!(!paths(&walked).iter().any(|p| p.starts_with("state")));
        assert_eq!(parts.len(), 1, "the part file is reported, not walked");
        let link = walked.iter().find(|w| w.path == b"a/link").unwrap();
        assert_eq!(link.kind, Kind::Symlink, "a symlink is not followed");
        assert!(!paths(&walked).contains(&"a/link/y".to_string()));
        assert!(
            warnings
                .iter()
                .any(|w| w.skipped_special && w.path.ends_with("m/fifo"))
        );
        // The `ignore` crate's walk (`--filter-gitignore`'s, with no ignore files here)
        // finds the same entries, with the same metadata.
        let (mut other, other_warnings, _, other_parts) = super::super::walk::walk(
            &root,
            &ScanOptions {
                gitignore: true,
                ..opts
            },
        )
        .unwrap();
        other.retain(|w| !w.path.ends_with(b".gitignore"));
        assert_eq!(paths(&walked), paths(&other));
        for (a, b) in walked.iter().zip(&other) {
            assert_eq!(
                (a.kind, a.mode, a.stat, a.owner, a.dev, a.nlink),
                (b.kind, b.mode, b.stat, b.owner, b.dev, b.nlink),
                "{}",
                String::from_utf8_lossy(&a.path)
            );
        }
        assert_eq!(parts, other_parts);
        assert_eq!(warnings.len(), other_warnings.len());
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_is_reported_not_followed() {
        // What a swap between listing a directory and opening one of its entries leaves:
        // the job for `d` finds a symlink to a directory outside the tree.
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("d")).unwrap();
        let parent =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let opts = ScanOptions::default();
        let w = Walk {
            opts: &opts,
            exclude: None,
            next: AtomicU64::new(1),
            done: Mutex::new(Vec::new()),
        };
        let job = Job {
            id: 0,
            open: Open::Child(Arc::new(parent)),
            abs: t.path().join("d"),
            rel: b"d".to_vec(),
        };
        rayon::scope(|s| list(s, job, &w));
        let done = w.done.into_inner().unwrap();
        let (_, l) = &done[0];
        assert!(
            l.items.is_empty(),
            "walked through the symlink: {:?}",
            paths(&l.items)
        );
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].path.ends_with("d"));
    }

    #[test]
    fn a_deep_tree_walks_in_constant_stack() {
        // 2000 levels (a path of ~4000 bytes, under PATH_MAX): one job per directory,
        // not one stack frame per level.
        let t = tempfile::tempdir().unwrap();
        let deep: PathBuf = std::iter::repeat_n("d", 2000).collect();
        fs::create_dir_all(t.path().join(&deep)).unwrap();
        fs::write(t.path().join(&deep).join("f"), b"x").unwrap();
        let (walked, warnings, _, _) = walk(t.path(), &ScanOptions::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(walked.len(), 2001);
        assert_eq!(walked[2000].kind, Kind::File);
    }
}
