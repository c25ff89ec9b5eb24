//! The walk with `--filter-gitignore` (the `ignore` crate; every other walk is
//! [`super::fdwalk`]'s): entries collected per thread in batches, the filter rules applied
//! per entry (excluded directories not entered), this home's part files and the state
//! directory left out, special files and unreadable entries reported.

use super::fdwalk;
use super::*;
use crate::lock::lock;

/// What a walk found: the entries, the warnings, the root's metadata, and the part files
/// it left out.
pub(super) type WalkOut = (Vec<Walked>, Vec<Warning>, std::fs::Metadata, Vec<Vec<u8>>);

/// Walks the tree at `root`; the entries come in component order.
pub(super) fn walk(root: &Path, opts: &ScanOptions) -> Result<WalkOut, ScanError> {
    if !opts.gitignore {
        return super::fdwalk::walk(root, opts);
    }
    let mut out = walk_ignore(root, opts)?;
    out.0
        .par_sort_unstable_by(|a, b| component_order(&a.path, &b.path));
    Ok(out)
}

/// The walk with `.gitignore` rules, by the `ignore` crate.
fn walk_ignore(root: &Path, opts: &ScanOptions) -> Result<WalkOut, ScanError> {
    let root_meta = std::fs::metadata(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let mut builder = WalkBuilder::new(root);
    builder
        .standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .threads(rayon::current_num_threads().max(2));
    if opts.gitignore {
        builder
            .git_ignore(true)
            .git_exclude(true)
            .ignore(true)
            .parents(false)
            .require_git(false);
    }
    if !opts.filter.is_empty() {
        let filter = opts.filter.clone();
        let root = root.to_path_buf();
        builder.filter_entry(move |e| {
            let Ok(rel) = e.path().strip_prefix(&root) else {
                return true;
            };
            let rel = rel.as_os_str().as_bytes();
            rel.is_empty() || !filter.excludes(rel, e.file_type().is_some_and(|t| t.is_dir()))
        });
    }
    let mut ov = ignore::overrides::OverrideBuilder::new(root);
    let mut any_override = false;
    if let Some(p) = &opts.exclude_path
        && let Ok(rel) = p.strip_prefix(root)
        && !rel.as_os_str().is_empty()
    {
        ov.add(&format!("!/{}", rel.display()))
            .map_err(|e| ScanError::BadExclude {
                pattern: rel.display().to_string(),
                message: e.to_string(),
            })?;
        any_override = true;
    }
    if any_override {
        let built = ov.build().map_err(|e| ScanError::BadExclude {
            pattern: "the state directory".into(),
            message: e.to_string(),
        })?;
        builder.overrides(built);
    }
    let shared = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new())));
    let mut vb = CollectorBuilder {
        root: root.to_path_buf(),
        shared: shared.clone(),
        parts: opts.parts.clone(),
        changed_only: opts.changed_only.clone(),
    };
    builder.build_parallel().visit(&mut vb);
    drop(vb);
    let (walked, warnings, parts) = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(arc) => {
            let mut g = lock(&arc);
            (
                std::mem::take(&mut g.0),
                std::mem::take(&mut g.1),
                std::mem::take(&mut g.2),
            )
        }
    };
    Ok((walked, warnings, root_meta, parts))
}

pub(super) type Shared = Arc<Mutex<(Vec<Walked>, Vec<Warning>, Vec<Vec<u8>>)>>;

pub(super) struct CollectorBuilder {
    root: PathBuf,
    shared: Shared,
    parts: Option<crate::partname::PartKey>,
    changed_only: Option<Arc<Changed>>,
}

impl<'s> ParallelVisitorBuilder<'s> for CollectorBuilder {
    fn build(&mut self) -> Box<dyn ParallelVisitor + 's> {
        Box::new(Collector {
            root: self.root.clone(),
            shared: self.shared.clone(),
            parts: self.parts.clone(),
            changed_only: self.changed_only.clone(),
            walked: Vec::new(),
            warnings: Vec::new(),
            found_parts: Vec::new(),
        })
    }
}

pub(super) struct Collector {
    root: PathBuf,
    shared: Shared,
    parts: Option<crate::partname::PartKey>,
    changed_only: Option<Arc<Changed>>,
    walked: Vec<Walked>,
    warnings: Vec<Warning>,
    found_parts: Vec<Vec<u8>>,
}

impl Collector {
    pub(super) fn flush(&mut self) {
        let mut g = lock(&self.shared);
        g.0.append(&mut self.walked);
        g.1.append(&mut self.warnings);
        g.2.append(&mut self.found_parts);
    }

    /// Collects one entry; says whether to walk into it (a directory).
    pub(super) fn entry(&mut self, e: DirEntry) -> WalkState {
        if e.depth() == 0 {
            return WalkState::Continue; // the root itself
        }
        let Ok(rel) = e.path().strip_prefix(&self.root) else {
            return WalkState::Continue;
        };
        let path = rel.as_os_str().as_bytes();
        if let Some(key) = &self.parts
            && key.is_part(e.file_name().as_bytes())
        {
            self.found_parts.push(path.to_vec());
            return WalkState::Continue;
        }
        if let Some(changed) = &self.changed_only
            && !changed.dirs.contains(path)
            && !changed.entries.contains(path)
            && let Some(ft) = e.file_type()
        {
            // Untouched: its kind from the listing, its hash from the store.
            if let Some(kind) = kind_of(ft) {
                self.walked.push(Walked::kept(path.to_vec(), kind));
                if self.walked.len() >= 8192 {
                    self.flush();
                }
                return if kind == Kind::Dir {
                    WalkState::Skip
                } else {
                    WalkState::Continue
                };
            }
        }
        let warn = |message: String, special: bool| Warning {
            path: e.path().to_path_buf(),
            message,
            skipped_special: special,
        };
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(err) => {
                self.warnings.push(warn(io_message(&err), false));
                return WalkState::Continue;
            }
        };
        let ty = rustix::fs::FileType::from_raw_mode(meta.mode());
        let Some(kind) = fdwalk::kind_of_type(ty) else {
            let what = fdwalk::special_name(ty);
            self.warnings.push(warn(format!("skipped {what}"), true));
            return WalkState::Continue;
        };
        self.walked.push(Walked {
            path: path.to_vec(),
            kind,
            mode: meta.mode() & 0o7777,
            stat: stat_of(&meta),
            owner: (meta.uid(), meta.gid()),
            dev: meta.dev(),
            nlink: meta.nlink(),
            kept: false,
        });
        if self.walked.len() >= 8192 {
            self.flush();
        }
        WalkState::Continue
    }
}

/// The manifest kind of a file type; `None` for sockets, fifos and devices.
pub(super) fn kind_of(ft: std::fs::FileType) -> Option<Kind> {
    if ft.is_dir() {
        Some(Kind::Dir)
    } else if ft.is_file() {
        Some(Kind::File)
    } else if ft.is_symlink() {
        Some(Kind::Symlink)
    } else {
        None
    }
}

/// The innermost message of an `ignore` error, without the path it repeats.
pub(super) fn io_message(e: &ignore::Error) -> String {
    match e.io_error() {
        Some(io) => io.to_string(),
        None => e.to_string(),
    }
}

pub(super) fn error_path(e: &ignore::Error) -> Option<PathBuf> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}

impl ParallelVisitor for Collector {
    fn visit(&mut self, entry: Result<DirEntry, ignore::Error>) -> WalkState {
        match entry {
            Ok(e) => return self.entry(e),
            Err(err) => {
                let path = error_path(&err).unwrap_or_else(|| self.root.clone());
                self.warnings.push(Warning {
                    path,
                    message: io_message(&err),
                    skipped_special: false,
                });
            }
        }
        WalkState::Continue
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.flush();
    }
}
