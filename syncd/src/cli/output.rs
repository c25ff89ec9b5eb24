//! Text and JSON output shared by the commands: itemized change lines, byte counts.

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use syncd::manifest::{self, display_path};

/// The marker of a difference between A (the source) and B (the destination), in the
/// direction `push --dry-run` uses: what DEST lacks or has extra relative to SRC. `+` DEST
/// lacks it (a push creates it), `-` only DEST has it (`--delete` removes it), `M` content
/// differs, `m` only metadata, `T` the type.
pub(crate) fn marker(kind: manifest::ChangeKind) -> char {
    match kind {
        manifest::ChangeKind::Added => '-',
        manifest::ChangeKind::Removed => '+',
        other => other.marker(),
    }
}

/// The changes a push reported, by path.
pub(crate) fn sorted_changes(changes: &[(char, u8, Vec<u8>)]) -> Vec<(char, u8, Vec<u8>)> {
    let mut c = changes.to_vec();
    c.sort_by(|a, b| a.2.cmp(&b.2));
    c
}

/// Writes one listed change: a line ([`change_line`]), or with `null` the marker, a space
/// and the name's raw bytes, ended by NUL.
pub(crate) fn write_change(
    out: &mut impl Write,
    null: bool,
    m: char,
    attrs: u8,
    path: &[u8],
) -> Result<()> {
    if null {
        write!(out, "{m} ")?;
        out.write_all(path)?;
        out.write_all(b"\0")?;
    } else {
        writeln!(out, "{}", change_line(m, attrs, path))?;
    }
    Ok(())
}

/// One listed change: `m path (mode, mtime)`.
pub(crate) fn change_line(m: char, attrs: u8, path: &[u8]) -> String {
    let names = syncd::proto::codec::attr::names(attrs);
    if names.is_empty() {
        format!("{m} {}", display_path(path))
    } else {
        format!("{m} {} ({})", display_path(path), names.join(", "))
    }
}

/// One listed change in JSON.
pub(crate) fn change_json(m: char, attrs: u8, path: &[u8]) -> serde_json::Value {
    json!({
        "marker": m.to_string(),
        "change": change_word(m),
        "path": display_path(path),
        "attrs": syncd::proto::codec::attr::names(attrs),
    })
}

/// The JSON word for a marker.
pub(crate) fn change_word(marker: char) -> &'static str {
    match marker {
        '+' => "create",
        '-' => "delete",
        'M' => "modify",
        'm' => "metadata",
        'T' => "type",
        _ => "other",
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
