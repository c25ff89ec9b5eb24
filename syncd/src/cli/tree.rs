//! `syncd manifest`, `diff` and `verify`: the commands that read trees and manifests.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use syncd::manifest::store::{Opened, Store};
use syncd::manifest::{self, Change};
use syncd::scan::{self, Problem, ScanOptions, Summary};

use super::*;
use crate::*;

pub(crate) fn options(home: &Path, filters: &Filters) -> ScanOptions {
    ScanOptions {
        // `with_rules` compiled them already.
        filter: syncd::filter::Filter::new(filters.rules.clone()).unwrap_or_default(),
        gitignore: filters.filter_gitignore,
        params: Default::default(),
        exclude_path: std::fs::canonicalize(home).ok(),
        // This home's own part files are never part of a tree (a DEST it receives into
        // may be scanned here too).
        parts: syncd::partname::PartKey::load(home).ok(),
        changed_only: None,
        owners: filters.owners(),
        sink: None,
        known: None,
    }
}

/// Opens (or creates, or rebuilds) the store of `dir` and refreshes it.
pub(crate) fn refresh(dir: &Path, home: &Path, filters: &Filters) -> Result<(Store, Summary)> {
    let root = scan::canonical_root(dir)?;
    let store = match Store::open(home, &root, filters.owners())? {
        Opened::Rebuilt {
            store,
            reason,
            moved_to,
        } => {
            eprintln!(
                "syncd: warning: {reason}; moved it to {} and rebuilding the manifest",
                moved_to.display()
            );
            store
        }
        other => other.into_store(),
    };
    let summary = scan::refresh(&root, &store, &options(home, filters))?;
    for w in &summary.warnings {
        eprintln!("syncd: warning: {w}");
    }
    Ok((store, summary))
}

pub(crate) fn cmd_manifest(
    dir: &Path,
    json: bool,
    home: &Path,
    filters: &Filters,
) -> Result<Outcome> {
    let t = Instant::now();
    let (store, s) = refresh(dir, home, filters)?;
    let secs = t.elapsed().as_secs_f64();
    let errors = s.errors().count();
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "path": s.root_path,
            "root": s.root.to_hex(),
            "owners": filters.owners(),
            "files": s.files,
            "dirs": s.dirs,
            "symlinks": s.symlinks,
            "bytes": s.bytes,
            "hashed_files": s.hashed_files,
            "hashed_bytes": s.hashed_bytes,
            "seconds": secs,
            "store": store.path(),
            "unreadable": errors,
            "warnings": s.warnings.iter().map(|w| json!({"path": w.path, "message": w.message})).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "root {}  files {}  bytes {} ({})  dirs {}  symlinks {}  read {} files ({})  {:.3}s",
            s.root,
            s.files,
            s.bytes,
            human_bytes(s.bytes),
            s.dirs,
            s.symlinks,
            s.hashed_files,
            human_bytes(s.hashed_bytes),
            secs
        )?;
    }
    if errors > 0 {
        eprintln!("syncd: {errors} entries could not be read; the manifest leaves them out");
        return Ok(Outcome::Found);
    }
    Ok(Outcome::Ok)
}

pub(crate) fn cmd_diff(
    a: &Path,
    b: &Path,
    (json, null): (bool, bool),
    cached: bool,
    home: &Path,
    filters: &Filters,
) -> Result<Outcome> {
    let t = Instant::now();
    for dir in [a, b] {
        if !dir.exists() {
            anyhow::bail!("{}: no such directory", dir.display());
        }
    }
    if scan::canonical_root(a)? == scan::canonical_root(b)? {
        // One tree, named twice: identical, unless some of it cannot be read.
        let unreadable = if cached {
            0
        } else {
            refresh(a, home, filters)?.1.errors().count()
        };
        if json {
            let v = json!({"identical": unreadable == 0, "same_tree": true, "unreadable": unreadable, "changes": []});
            writeln!(std::io::stdout().lock(), "{v}")?;
        }
        if unreadable > 0 {
            eprintln!("syncd: {unreadable} entries could not be read (listed above)");
            return Ok(Outcome::Found);
        }
        return Ok(Outcome::Ok);
    }
    let mut unreadable = 0;
    let (sa, sb) = if cached {
        let open = |dir: &Path| -> Result<Store> {
            let root = scan::canonical_root(dir)?;
            Store::open_existing(home, &root, filters.owners())?.with_context(|| {
                format!(
                    "no stored manifest for {}; run `syncd manifest {}` first",
                    dir.display(),
                    dir.display()
                )
            })
        };
        (open(a)?, open(b)?)
    } else {
        // Both refreshes at once: each is parallel, but each also has sequential phases
        // (sorting, rebuilding directory nodes) that the other can overlap.
        let (ra, rb) = std::thread::scope(|s| {
            let tb = s.spawn(|| refresh(b, home, filters));
            let ra = refresh(a, home, filters);
            (ra, tb.join())
        });
        let rb = rb.map_err(|_| anyhow::anyhow!("refreshing {} panicked", b.display()))?;
        let ((sa, suma), (sb, sumb)) = (ra?, rb?);
        unreadable = suma.errors().count() + sumb.errors().count();
        (sa, sb)
    };
    let (na, nb) = (sa.snapshot()?, sb.snapshot()?);
    let changes: Vec<Change> = manifest::diff(&na, &nb)?;
    // Which attributes differ where only metadata does, as a push would report them.
    use syncd::manifest::Nodes as _;
    let attrs: std::collections::HashMap<Vec<u8>, u8> = changes
        .iter()
        .filter(|c| c.kind == manifest::ChangeKind::Metadata)
        .filter_map(|c| {
            let (a, b) = (na.node(&c.path).ok()??, nb.node(&c.path).ok()??);
            let (_, bits) = syncd::proto::classify(Some(&b), &a.into(), false)?;
            Some((c.path.clone(), bits))
        })
        .collect();
    let attrs_of = |c: &Change| attrs.get(&c.path).copied().unwrap_or(0);
    let (ra, rb) = (na.root()?, nb.root()?);
    let secs = t.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "identical": changes.is_empty() && unreadable == 0,
            "unreadable": unreadable,
            "root_a": ra.map(|h| h.to_hex()),
            "root_b": rb.map(|h| h.to_hex()),
            "seconds": secs,
            "changes": changes.iter().map(|c| change_json(marker(c.kind), attrs_of(c), &c.path)).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        for c in &changes {
            write_change(&mut out, null, marker(c.kind), attrs_of(c), &c.path)?;
        }
    }
    if unreadable > 0 {
        eprintln!(
            "syncd: {unreadable} entries could not be read (listed above) and were not compared: the trees are not known to be identical"
        );
        return Ok(Outcome::Found);
    }
    Ok(if changes.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Found
    })
}

pub(crate) fn cmd_verify(dir: &Path, json: bool, home: &Path) -> Result<Outcome> {
    let t = Instant::now();
    let root = scan::canonical_root(dir)?;
    // The manifest of the mode `syncd manifest` uses here, else the other one.
    let owners = syncd::fsmeta::running_as_root();
    let store = match Store::open_existing(home, &root, owners)? {
        Some(s) => Some(s),
        None => Store::open_existing(home, &root, !owners)?,
    };
    let store = store.with_context(|| {
        format!(
            "no stored manifest for {}; run `syncd manifest {}` first",
            dir.display(),
            dir.display()
        )
    })?;
    let snap = store.snapshot()?;
    let findings = scan::verify(&root, &snap, Default::default())?;
    let label = |p: &Problem| match p {
        Problem::BitRot => "bitrot",
        Problem::Modified => "modified",
        Problem::Missing => "missing",
        Problem::Unreadable(_) => "unreadable",
    };
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "ok": findings.is_empty(),
            "root": snap.root()?.map(|h| h.to_hex()),
            "seconds": t.elapsed().as_secs_f64(),
            "findings": findings.iter().map(|f| json!({
                "path": f.path,
                "problem": label(&f.problem),
                "detail": match &f.problem { Problem::Unreadable(m) => Some(m.as_str()), _ => None },
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        for f in &findings {
            match &f.problem {
                Problem::Unreadable(m) => writeln!(out, "unreadable {}: {m}", f.path.display())?,
                p => writeln!(out, "{} {}", label(p), f.path.display())?,
            }
        }
        if findings.is_empty() {
            writeln!(
                out,
                "ok: every file matches the manifest ({:.3}s)",
                t.elapsed().as_secs_f64()
            )?;
        }
    }
    Ok(if findings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Found
    })
}
