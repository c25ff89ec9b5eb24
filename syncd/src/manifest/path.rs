//! Relative paths as raw bytes: name and path checks (no `..`, no `/` in a name, no NUL),
//! component order, join/parent/file name, and display for humans.

use super::*;

/// Refuses names that are not a single, plain path component.
pub fn check_name(name: &[u8]) -> Result<(), DecodeError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(DecodeError::BadName(display_path(name)));
    }
    Ok(())
}

/// Refuses relative paths that are not `/`-joined plain components (so also the empty
/// path, which is the root and never a file).
pub fn check_path(path: &[u8]) -> Result<(), DecodeError> {
    for name in path.split(|&b| b == b'/') {
        check_name(name).map_err(|_| DecodeError::BadName(display_path(path)))?;
    }
    Ok(())
}

/// Orders paths component by component, so that a directory is directly followed by its
/// subtree: names never contain NUL, so comparing with `/` mapped to NUL does exactly that.
/// Scans walk in this order, and [`FileNode::link`] names the first path of an inode in it.
pub fn component_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let map = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(map).cmp(b.iter().map(map))
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The parent of a non-root relative path (the root's parent is itself).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// The last component of a non-root relative path.
pub fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// A path for humans, one per line: UTF-8 as is, newline and tab as `\n` and `\t`, other
/// control characters and bytes that are not UTF-8 as `\xNN`, backslash doubled.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for chunk in path.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                // One name per line: a newline or another control character in a name is
                // escaped, never printed.
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}
