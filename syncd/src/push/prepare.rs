//! The receiver's tree before and during a session: its options, its manifest store, and
//! the refresh that brings the manifest up to date (all of it, or only what changed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{PushError, join_err};
use crate::manifest::store::{Opened, Store};
use crate::partname::PartKey;
use crate::scan::{self, ScanOptions, Summary};

/// Receiver-side configuration.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// State directory (the receiver's manifest store).
    pub home: PathBuf,
    /// Names and recognises the receiver's part files ([`crate::partname`]).
    pub parts: PartKey,
    /// A session that makes no progress for this long ends with an error.
    pub idle_timeout: Duration,
    /// Filter rules the tree is compared under (the sender's, from [`Frame::Options`]).
    pub filter: crate::filter::Filter,
    /// The mode its manifest is refreshed in before the sender's `Hello` says which one the
    /// session uses ([`ScanOptions::owners`]): the one a sender most likely uses.
    pub owners: bool,
}

pub(super) fn dest_scan_options(home: &Path, owners: bool, parts: PartKey) -> ScanOptions {
    ScanOptions {
        exclude_path: std::fs::canonicalize(home).ok(),
        parts: Some(parts),
        owners,
        ..ScanOptions::default()
    }
}

pub(super) fn open_store(home: &Path, root: &Path, owners: bool) -> Result<Store, PushError> {
    Ok(match Store::open(home, root, owners)? {
        Opened::Rebuilt {
            store,
            reason,
            moved_to,
        } => {
            tracing::warn!(
                "{reason}; moved it to {} and rebuilding the manifest of {}",
                moved_to.display(),
                root.display()
            );
            store
        }
        other => other.into_store(),
    })
}

/// Refreshes the receiver's manifest (opening its store first if `store` is `None`),
/// looking only at what `changed` names if given (falling back to a full walk if a
/// directory it keeps has no stored record).
pub(super) async fn refresh_blocking(
    root: PathBuf,
    opts: ReceiveOptions,
    store: Option<Arc<Store>>,
    changed: Option<scan::Changed>,
) -> Result<(Arc<Store>, Summary), PushError> {
    tokio::task::spawn_blocking(move || {
        let ReceiveOptions {
            home,
            owners,
            parts,
            filter,
            ..
        } = opts;
        let store = match store {
            Some(s) => s,
            None => Arc::new(open_store(&home, &root, owners)?),
        };
        let full = ScanOptions {
            filter,
            ..dest_scan_options(&home, owners, parts)
        };
        let partial = changed.map(|c| ScanOptions {
            changed_only: Some(Arc::new(c)),
            ..full.clone()
        });
        let summary = match partial.map(|p| scan::refresh(&root, &store, &p)) {
            Some(Err(scan::ScanError::NotStored(_))) | None => scan::refresh(&root, &store, &full)?,
            Some(result) => result?,
        };
        Ok::<_, PushError>((store, summary))
    })
    .await
    .map_err(join_err)?
}

/// The receiver's tree at the start of a session: its canonical root, its store, and the
/// refresh that brought its manifest up to date.
pub(super) struct Prepared {
    pub(super) root: PathBuf,
    pub(super) store: Arc<Store>,
    pub(super) summary: Summary,
}

/// Refreshes the receiver's manifest of `root`. The drivers start this as soon as a session
/// begins, so that it runs while the sender scans its own tree.
pub(super) async fn prepare_receiver(
    root: &Path,
    opts: &ReceiveOptions,
) -> Result<Prepared, PushError> {
    prepare_receiver_from(root, opts, None).await
}

/// The receiver's refresh, started as a session begins so that it runs while the sender
/// scans, and taken where the session first needs the manifest. Whatever the session did
/// with it, [`Preparing::settle`] waits for it, so that nothing of a session still holds
/// the store when the next one opens it.
pub(super) struct Preparing(Option<tokio::task::JoinHandle<Result<Prepared, PushError>>>);

impl Preparing {
    /// Starts [`prepare_receiver_from`] on its own task.
    pub(super) fn start(
        root: &Path,
        opts: &ReceiveOptions,
        changed: Option<scan::Changed>,
    ) -> Self {
        let (root, opts) = (root.to_path_buf(), opts.clone());
        Preparing(Some(tokio::spawn(async move {
            prepare_receiver_from(&root, &opts, changed).await
        })))
    }

    /// The prepared tree (once: a second call is an error).
    pub(super) async fn take(&mut self) -> Result<Prepared, PushError> {
        match self.0.take() {
            Some(task) => task.await.map_err(join_err)?,
            None => Err(PushError::Io {
                peer: "local".into(),
                source: std::io::Error::other("the receiver's tree was already taken"),
            }),
        }
    }

    /// Waits for a refresh the session did not take.
    pub(super) async fn settle(mut self) {
        if let Some(task) = self.0.take() {
            let _ = task.await;
        }
    }
}

/// [`prepare_receiver`], looking only at what `changed` names if given (a `serve` whose
/// previous session left the manifest current passes an empty set: only the root is
/// listed; see "The receiver's side of a long session" in ARCHITECTURE.md).
pub(super) async fn prepare_receiver_from(
    root: &Path,
    opts: &ReceiveOptions,
    changed: Option<scan::Changed>,
) -> Result<Prepared, PushError> {
    let root = scan::canonical_root(root)?;
    let (store, summary) = refresh_blocking(root.clone(), opts.clone(), None, changed).await?;
    Ok(Prepared {
        root,
        store,
        summary,
    })
}
