//! `syncd verify`: the tree re-hashed from disk against its stored manifest.

use super::*;

/// One finding of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The entry.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

/// What [`verify`] can find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Content differs while size and mtime are unchanged: bit-rot, or a write that
    /// restored the mtime afterwards (either way, the stat cache would not have noticed).
    BitRot,
    /// The file was modified since the manifest was built (its stat changed too).
    Modified,
    /// The entry is gone.
    Missing,
    /// It could not be read.
    Unreadable(String),
}

/// Re-hashes every file and symlink of the stored manifest from disk, ignoring the stat
/// cache, and reports those that differ. The store is not modified.
pub fn verify(
    root: &Path,
    snap: &Snapshot,
    params: ChunkParams,
) -> Result<Vec<Finding>, ScanError> {
    let root = canonical_root(root)?;
    let mut todo = Vec::new();
    snap.for_each(|k, rec| {
        if !matches!(rec.node, Node::Dir { .. }) {
            todo.push((k.to_vec(), rec));
        }
        Ok(())
    })?;
    let mut findings: Vec<Finding> = todo
        .par_iter()
        .filter_map(|(k, rec)| {
            let path = root.join(OsStr::from_bytes(k));
            let problem = match &rec.node {
                Node::Symlink { target, .. } => match std::fs::read_link(&path) {
                    Ok(t) if t.as_os_str().as_bytes() == target.as_slice() => None,
                    Ok(_) => Some(Problem::Modified),
                    Err(e) => Some(io_problem(e)),
                },
                Node::File(old) => {
                    match read_file(&path, None, params, false, &AtomicU64::new(0)) {
                        Ok((new, stat)) => {
                            if new.chunks == old.chunks {
                                None
                            } else if stat.size == rec.stat.size
                                && stat.mtime_ns == rec.stat.mtime_ns
                            {
                                Some(Problem::BitRot)
                            } else {
                                Some(Problem::Modified)
                            }
                        }
                        Err(e) => Some(io_problem(e)),
                    }
                }
                Node::Dir { .. } => None,
            };
            problem.map(|problem| Finding { path, problem })
        })
        .collect();
    findings.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(findings)
}

pub(super) fn io_problem(e: std::io::Error) -> Problem {
    if e.kind() == std::io::ErrorKind::NotFound {
        Problem::Missing
    } else {
        Problem::Unreadable(e.to_string())
    }
}
