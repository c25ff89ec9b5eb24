//! Persistence of one tree's manifest in a redb database, with the stat cache.
//!
//! One database per synced directory, kept under `--home` (never inside the tree). Table
//! `nodes` maps a relative path to a record: the node hash, the stat fields that let a
//! refresh skip unchanged files (size, mtime_ns, ctime_ns, ino), and the encoded node.
//! Table `meta` holds the format tag and the directory the manifest describes.
//!
//! Every refresh commits in one redb write transaction, so a refresh that is killed leaves
//! the previous manifest intact. A database that redb cannot open, or whose format tag or
//! records are foreign, is renamed aside (`*.corrupt`) and rebuilt by the caller; it is never
//! a panic.
//!
//! This module does not walk or read the tree: [`crate::scan`] does, and hands records here.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use super::{DecodeError, Hash, Node, Nodes, display_path};

const NODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nodes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// 2: nodes cover their attributes ([`super::attrs_hash`]). A store holds the manifest of
/// one mode: without owners ([`FORMAT`]) or with them ([`FORMAT_OWNERS`]).
const FORMAT: &[u8] = b"syncd-manifest-2";
const FORMAT_OWNERS: &[u8] = b"syncd-manifest-2+owners";
const HEADER: usize = 32 + 8 * 4;
/// redb page cache per open store.
const CACHE_BYTES: usize = 32 << 20;

/// Errors of the manifest store. Each carries the database path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (IO error, lock held by another process, ...).
    #[error("manifest store {}: {source}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What redb said (boxed: redb's error is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// Another process has the database open: a `serve` session writing into the tree, or
    /// another command using the same `--home`.
    #[error(
        "manifest store {} is in use by another syncd process (a running serve session, or \
         another command with the same --home); run this again once it is done",
        path.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database is readable but does not hold a syncd manifest of this format.
    #[error("manifest store {}: {reason}", path.display())]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record does not decode.
    #[error("manifest store {}: record for {entry} is corrupt: {source}", path.display(), entry = display_path(key))]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The record's key.
        key: Vec<u8>,
        /// Why it does not decode.
        #[source]
        source: DecodeError,
    },
    /// Filesystem error around the database file (creating its directory, renaming it).
    #[error("manifest store {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when the database itself is damaged or foreign (rebuild it), as opposed to a
    /// transient condition such as a lock held by another process.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Foreign { .. } | StoreError::Corrupt { .. } => true,
            StoreError::Db { source, .. } => match source.as_ref() {
                redb::Error::Corrupted(_)
                | redb::Error::UpgradeRequired(_)
                | redb::Error::TableTypeMismatch { .. }
                | redb::Error::TypeDefinitionChanged { .. } => true,
                // redb reports a file that is not a database as invalid data.
                redb::Error::Io(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ),
                _ => false,
            },
            StoreError::Io { .. } | StoreError::InUse { .. } => false,
        }
    }
}

/// The stat fields that decide whether a file must be re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

/// One stored entry: its node, its hash and (for files) the stat it was read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node hash.
    pub hash: Hash,
    /// Stat at the time the node was built (zero for directories and symlinks).
    pub stat: Stat,
    /// The node.
    pub node: Node,
}

impl Record {
    /// Encodes hash, stat and node into one value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + 64);
        v.extend_from_slice(&self.hash.0);
        v.extend_from_slice(&self.stat.size.to_le_bytes());
        v.extend_from_slice(&self.stat.mtime_ns.to_le_bytes());
        v.extend_from_slice(&self.stat.ctime_ns.to_le_bytes());
        v.extend_from_slice(&self.stat.ino.to_le_bytes());
        self.node.encode(&mut v);
        v
    }

    /// Decodes a value and checks that the stored hash matches the node.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let (hash, stat) = Self::decode_header(bytes)?;
        let node = Node::decode(&bytes[HEADER..])?;
        if node.hash() != hash {
            return Err(DecodeError::HashMismatch);
        }
        Ok(Record { hash, stat, node })
    }

    /// Only the hash and stat, without decoding the node (the refresh fast path).
    pub fn decode_header(bytes: &[u8]) -> Result<(Hash, Stat), DecodeError> {
        if bytes.len() < HEADER {
            return Err(DecodeError::Truncated);
        }
        let u = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[32 + 8 * i..40 + 8 * i]);
            a
        };
        let mut h = [0u8; 32];
        h.copy_from_slice(&bytes[..32]);
        Ok((
            Hash(h),
            Stat {
                size: u64::from_le_bytes(u(0)),
                mtime_ns: i64::from_le_bytes(u(1)),
                ctime_ns: i64::from_le_bytes(u(2)),
                ino: u64::from_le_bytes(u(3)),
            },
        ))
    }
}

/// An open manifest database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

/// What opening found and did.
#[derive(Debug)]
pub enum Opened {
    /// The existing manifest is usable.
    Existing(Store),
    /// There was none; a new, empty one was created.
    Created(Store),
    /// The old one was corrupt or foreign: it was moved to `moved_to` and a new one made.
    Rebuilt {
        /// The new, empty store.
        store: Store,
        /// Why the old one was refused.
        reason: String,
        /// Where the old file now is.
        moved_to: PathBuf,
    },
}

impl Opened {
    /// The store, whatever happened.
    pub fn into_store(self) -> Store {
        match self {
            Opened::Existing(s) | Opened::Created(s) | Opened::Rebuilt { store: s, .. } => s,
        }
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

impl Store {
    /// The database file that holds the manifest of `tree` under `home`, with or without
    /// `owners` ([`crate::scan::ScanOptions::owners`]): one file per canonical tree path and
    /// mode, named by a hash of that path.
    pub fn path_for(home: &Path, tree: &Path, owners: bool) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let h = blake3::hash(tree.as_os_str().as_bytes()).to_hex();
        let mode = if owners { "-owners" } else { "" };
        home.join("manifests")
            .join(format!("{}{mode}.redb", &h[..24]))
    }

    /// Opens the store for `tree` (a canonical path) under `home`, in the mode `owners`,
    /// creating it if missing and rebuilding it if it is corrupt, of another format or mode,
    /// or belongs to another tree.
    pub fn open(home: &Path, tree: &Path, owners: bool) -> Result<Opened, StoreError> {
        let path = Self::path_for(home, tree, owners);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let existed = path.exists();
        match Self::open_checked(&path, tree, owners) {
            Ok(store) if existed => Ok(Opened::Existing(store)),
            Ok(store) => Ok(Opened::Created(store)),
            Err(e) if e.is_corruption() => {
                let reason = e.to_string();
                let moved_to = path.with_extension("redb.corrupt");
                std::fs::rename(&path, &moved_to).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                let store = Self::open_checked(&path, tree, owners)?;
                Ok(Opened::Rebuilt {
                    store,
                    reason,
                    moved_to,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Opens an existing store read-only in spirit (it is never written); `None` if there is
    /// no manifest for `tree` yet.
    pub fn open_existing(
        home: &Path,
        tree: &Path,
        owners: bool,
    ) -> Result<Option<Store>, StoreError> {
        let path = Self::path_for(home, tree, owners);
        if !path.exists() {
            return Ok(None);
        }
        Self::open_checked(&path, tree, owners).map(Some)
    }

    fn open_checked(path: &Path, tree: &Path, owners: bool) -> Result<Store, StoreError> {
        contained(path, || Self::open_unguarded(path, tree, owners))
    }

    fn open_unguarded(path: &Path, tree: &Path, owners: bool) -> Result<Store, StoreError> {
        use std::os::unix::ffi::OsStrExt;
        // redb's default 1 GiB page cache would hold a whole million-file manifest in
        // memory; a refresh reads each record about once, so a small cache loses little.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_path_buf(),
                },
                e => db_err(path, e),
            })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        let want_tree = tree.as_os_str().as_bytes();
        let want_format = if owners { FORMAT_OWNERS } else { FORMAT };
        // An existing store of this format and tree needs no write transaction, whose
        // commit would fsync on every open. Anything else takes the full path below, which
        // initialises a new store or reports what is wrong.
        if store.is_ours(want_format, want_tree) {
            return Ok(store);
        }
        let txn = store.db.begin_write().map_err(|e| db_err(path, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
            let format = meta
                .get("format")
                .map_err(|e| db_err(path, e))?
                .map(|v| v.value().to_vec());
            let owner = meta
                .get("tree")
                .map_err(|e| db_err(path, e))?
                .map(|v| v.value().to_vec());
            match (format, owner) {
                (None, None) => {
                    meta.insert("format", want_format)
                        .map_err(|e| db_err(path, e))?;
                    meta.insert("tree", want_tree)
                        .map_err(|e| db_err(path, e))?;
                }
                (Some(f), Some(t)) if f == want_format && t == want_tree => {}
                (Some(f), _) if f != want_format => {
                    return Err(StoreError::Foreign {
                        path: path.to_path_buf(),
                        reason: format!("unknown format {:?}", String::from_utf8_lossy(&f)),
                    });
                }
                (_, t) => {
                    return Err(StoreError::Foreign {
                        path: path.to_path_buf(),
                        reason: format!(
                            "it describes {:?}, not {}",
                            t.map(|t| String::from_utf8_lossy(&t).into_owned()),
                            tree.display()
                        ),
                    });
                }
            }
            txn.open_table(NODES).map_err(|e| db_err(path, e))?;
        }
        txn.commit().map_err(|e| db_err(path, e))?;
        Ok(store)
    }

    /// True if both tables exist and `meta` names `format` and `tree` (read-only check).
    fn is_ours(&self, format: &[u8], tree: &[u8]) -> bool {
        let Ok(txn) = self.db.begin_read() else {
            return false;
        };
        let (Ok(meta), Ok(_)) = (txn.open_table(META), txn.open_table(NODES)) else {
            return false;
        };
        let get = |k: &str| meta.get(k).ok().flatten().map(|v| v.value().to_vec());
        get("format").as_deref() == Some(format) && get("tree").as_deref() == Some(tree)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent read view.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let table = txn.open_table(NODES).map_err(|e| db_err(&self.path, e))?;
        Ok(Snapshot {
            table,
            path: self.path.clone(),
        })
    }

    /// Applies one refresh atomically: `put` records are inserted or replaced, and every
    /// path in `delete_trees` is removed together with everything below it.
    pub fn commit(
        &self,
        put: &[(Vec<u8>, Vec<u8>)],
        delete_trees: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let p = &self.path;
        let txn = self.db.begin_write().map_err(|e| db_err(p, e))?;
        {
            let mut t = txn.open_table(NODES).map_err(|e| db_err(p, e))?;
            for path in delete_trees {
                t.remove(path.as_slice()).map_err(|e| db_err(p, e))?;
                // Everything below `path/`: the keys in [path + "/", path + "0").
                let mut lo = path.clone();
                lo.push(b'/');
                let mut hi = path.clone();
                hi.push(b'/' + 1);
                t.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                    .map_err(|e| db_err(p, e))?;
            }
            for (k, v) in put {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(|e| db_err(p, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(p, e))?;
        Ok(())
    }
}

/// A read transaction over the `nodes` table. Implements [`Nodes`] for [`super::diff`].
#[derive(Debug)]
pub struct Snapshot {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    path: PathBuf,
}

impl Snapshot {
    /// The raw record bytes at `path`.
    pub fn raw(&self, path: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .table
            .get(path)
            .map_err(|e| db_err(&self.path, e))?
            .map(|v| v.value().to_vec()))
    }

    /// The hash and stat at `path`, without decoding the node.
    pub fn header(&self, path: &[u8]) -> Result<Option<(Hash, Stat)>, StoreError> {
        let Some(v) = self.table.get(path).map_err(|e| db_err(&self.path, e))? else {
            return Ok(None);
        };
        Record::decode_header(v.value())
            .map(Some)
            .map_err(|source| self.corrupt(path, source))
    }

    /// The full record at `path`.
    pub fn record(&self, path: &[u8]) -> Result<Option<Record>, StoreError> {
        let Some(v) = self.table.get(path).map_err(|e| db_err(&self.path, e))? else {
            return Ok(None);
        };
        Record::decode(v.value())
            .map(Some)
            .map_err(|source| self.corrupt(path, source))
    }

    /// The root hash, if a manifest has been built.
    pub fn root(&self) -> Result<Option<Hash>, StoreError> {
        Ok(self.header(b"")?.map(|(h, _)| h))
    }

    /// Every record, in key order (used by `verify`).
    pub fn for_each(
        &self,
        mut f: impl FnMut(&[u8], Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.table.iter().map_err(|e| db_err(&self.path, e))? {
            let (k, v) = item.map_err(|e| db_err(&self.path, e))?;
            let rec =
                Record::decode(v.value()).map_err(|source| self.corrupt(k.value(), source))?;
            f(k.value(), rec)?;
        }
        Ok(())
    }

    fn corrupt(&self, key: &[u8], source: DecodeError) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            key: key.to_vec(),
            source,
        }
    }
}

impl Nodes for Snapshot {
    type Error = StoreError;
    fn node(&self, path: &[u8]) -> Result<Option<Node>, StoreError> {
        Ok(self.record(path)?.map(|r| r.node))
    }
}

thread_local! {
    /// Set while [`contained`] runs on this thread: its panics are reported as errors, not
    /// printed by the panic hook.
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, which works on the database file at `path`, turning a panic inside the storage
/// layer into [`StoreError::Foreign`] (a corruption: the store is moved aside and rebuilt).
/// redb asserts on some damaged files (one truncated to a few pages) instead of returning
/// an error, and such a file must never make every later command panic.
fn contained<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
    let was = CONTAINING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(was));
    result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(StoreError::Foreign {
            path: path.to_path_buf(),
            reason: format!("the storage layer cannot read it ({why})"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(mode: u32) -> Record {
        let node = Node::Dir {
            mode,
            entries: Vec::new(),
            attrs: None,
        };
        Record {
            hash: node.hash(),
            stat: Stat::default(),
            node,
        }
    }

    #[test]
    fn commit_then_read_and_delete_subtrees() {
        let home = tempfile::tempdir().unwrap();
        let tree = Path::new("/some/tree");
        let store = Store::open(home.path(), tree, false).unwrap().into_store();
        let put: Vec<_> = [&b""[..], b"a", b"a/x", b"a/x/y", b"a.b", b"ab"]
            .iter()
            .map(|k| (k.to_vec(), rec(0o755).encode()))
            .collect();
        store.commit(&put, &[]).unwrap();
        store.commit(&[], &[b"a".to_vec()]).unwrap();
        let snap = store.snapshot().unwrap();
        for (k, present) in [
            (&b""[..], true),
            (b"a", false),
            (b"a/x", false),
            (b"a/x/y", false),
            (b"a.b", true),
            (b"ab", true),
        ] {
            assert_eq!(
                snap.record(k).unwrap().is_some(),
                present,
                "{}",
                display_path(k)
            );
        }
        assert_eq!(snap.root().unwrap(), Some(rec(0o755).hash));
    }

    #[test]
    fn garbage_file_is_moved_aside_and_rebuilt() {
        let home = tempfile::tempdir().unwrap();
        let tree = Path::new("/t");
        let path = Store::path_for(home.path(), tree, false);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0xabu8; 10_000]).unwrap();
        match Store::open(home.path(), tree, false).unwrap() {
            Opened::Rebuilt { moved_to, .. } => assert!(moved_to.exists()),
            other => panic!("expected a rebuild, got {other:?}"),
        }
        // The rebuilt one opens as existing next time.
        assert!(matches!(
            Store::open(home.path(), tree, false).unwrap(),
            Opened::Existing(_)
        ));
    }

    #[test]
    fn store_of_another_tree_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let a = Store::path_for(home.path(), Path::new("/a"), false);
        drop(Store::open(home.path(), Path::new("/b"), false).unwrap());
        std::fs::rename(Store::path_for(home.path(), Path::new("/b"), false), &a).unwrap();
        assert!(matches!(
            Store::open(home.path(), Path::new("/a"), false).unwrap(),
            Opened::Rebuilt { .. }
        ));
    }

    /// A store held by another process (here: another open of it) is neither rebuilt nor
    /// moved aside; the error says who is likely to hold it.
    #[test]
    fn a_store_in_use_is_reported_not_rebuilt() {
        let home = tempfile::tempdir().unwrap();
        let held = Store::open(home.path(), Path::new("/t"), false).unwrap();
        let err = Store::open(home.path(), Path::new("/t"), false).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(!err.is_corruption());
        assert!(
            err.to_string().contains("in use by another syncd process"),
            "{err}"
        );
        drop(held);
        assert!(matches!(
            Store::open(home.path(), Path::new("/t"), false).unwrap(),
            Opened::Existing(_)
        ));
    }

    #[test]
    fn corrupt_record_is_reported_with_its_key() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path(), Path::new("/t"), false)
            .unwrap()
            .into_store();
        let mut bad = rec(0o755).encode();
        bad[0] ^= 1; // hash no longer matches the node
        store.commit(&[(b"d".to_vec(), bad)], &[]).unwrap();
        let err = store.snapshot().unwrap().record(b"d").unwrap_err();
        assert!(err.is_corruption());
        assert!(err.to_string().contains("record for d"), "{err}");
    }
}
