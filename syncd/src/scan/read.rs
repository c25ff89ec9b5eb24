//! Reading source files: every open `O_NOFOLLOW | O_NONBLOCK` and checked by `fstat`
//! ([`open_source`]), and a file read and chunked again while it changes under the read
//! ([`read_file`]), so that nothing torn is recorded.

use super::*;

/// Opens a source file for reading the way every source open must: never through a
/// symlink (`O_NOFOLLOW`: a link swapped in for a file is not followed out of the tree),
/// never blocking on a FIFO swapped in (`O_NONBLOCK`), and only if what was opened is a
/// regular file that is, when `expect` gives the walk's `(device, inode)`, the one the walk
/// saw. Anything else is an error, so the entry counts as changed.
pub fn open_source(
    path: &Path,
    expect: Option<(u64, u64)>,
) -> std::io::Result<(File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("replaced by a symlink while being read")
            } else {
                e
            }
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other(
            "replaced by something that is not a regular file while being read",
        ));
    }
    if let Some((dev, ino)) = expect
        && (m.dev(), m.ino()) != (dev, ino)
    {
        return Err(std::io::Error::other(
            "replaced by another file while being read",
        ));
    }
    Ok((f, m))
}

/// Reads and chunks one file, with its attributes digest in mode `owners`
/// ([`ScanOptions::owners`]), checking with `fstat` before and after that it did not change
/// meanwhile. The file is opened with [`open_source`] (`expect` is the walk's device and
/// inode). Retries a few times, then fails with the path in the error; each attempt after
/// the first adds one to `rereads`.
pub fn read_file(
    path: &Path,
    expect: Option<(u64, u64)>,
    params: ChunkParams,
    owners: bool,
    rereads: &AtomicU64,
) -> std::io::Result<(FileNode, Stat)> {
    read_file_to(path, expect, params, owners, rereads, None)
}

/// Where [`read_file_to`] gives a file it read whole: a [`Sink`] and the file's path
/// relative to the tree.
pub(super) type Give<'a> = Option<(&'a dyn Sink, &'a [u8])>;

/// [`read_file`], handing a file read whole to `give` once the read is known consistent.
pub(super) fn read_file_to(
    path: &Path,
    expect: Option<(u64, u64)>,
    params: ChunkParams,
    owners: bool,
    rereads: &AtomicU64,
    give: Give<'_>,
) -> std::io::Result<(FileNode, Stat)> {
    for attempt in 0..READ_RETRIES {
        if attempt > 0 {
            rereads.fetch_add(1, Ordering::Relaxed);
        }
        let (mut f, before) = open_source(path, expect)?;
        let (chunks, whole) = read_chunks(&mut f, before.size(), params)?;
        let after = f.metadata()?;
        let (s0, s1) = (stat_of(&before), stat_of(&after));
        let read: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        // Timestamps move in clock ticks (milliseconds), so a file written in place twice
        // within one tick while we read it keeps its stat: one modified that recently is
        // read a second time, and counts as consistent only if both reads agree.
        let racy = s1.mtime_ns + RACY_NS >= now_ns() || s1.ctime_ns + RACY_NS >= now_ns();
        let stable = !racy || {
            use std::io::Seek;
            f.rewind()?;
            read_chunks(&mut f, before.size(), params)?.0 == chunks && stat_of(&f.metadata()?) == s1
        };
        if s0 == s1 && read == s0.size && stable {
            // The owner is the one the returned stat saw, and the xattrs are read after it:
            // a change after the stat moves the ctime, so the next scan looks again.
            let owner = (before.uid(), before.gid());
            let xattrs = file_xattrs(&f)?;
            let node = FileNode {
                size: s0.size,
                mode: before.mode() & 0o7777,
                mtime_ns: s0.mtime_ns,
                chunks,
                link: None,
                attrs: attrs_hash(owners.then_some(owner), &xattrs),
            };
            if let (Some((sink, rel)), Some(whole)) = (give, whole) {
                sink.file(rel, &node, whole, owner, &xattrs);
            }
            return Ok((node, s0));
        }
    }
    Err(std::io::Error::other(format!(
        "changed while being read ({READ_RETRIES} attempts); not recorded"
    )))
}

/// The chunks of the open file `f` of `size` bytes, and for a file read whole (up to
/// [`WHOLE_FILE`]) its bytes with them.
pub(super) fn read_chunks(
    f: &mut File,
    size: u64,
    params: ChunkParams,
) -> std::io::Result<(Vec<ChunkRef>, Option<chunk::Chunked>)> {
    let to_ref = |c: &chunk::Chunk| ChunkRef {
        id: c.id,
        len: c.len,
    };
    if size <= WHOLE_FILE {
        // Exactly the size the stat said, in one read for most files: a file that grew
        // or shrank meanwhile has another stat afterwards (or reads short), and the caller
        // compares both. (Not `read_to_end`, which asks the file for its size and position
        // again, and reads once more to find the end.)
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        let whole = chunk::Chunked::of(buf, params);
        return Ok((whole.chunks().iter().map(to_ref).collect(), Some(whole)));
    }
    let mut out = Vec::with_capacity((size / u64::from(params.avg())) as usize + 1);
    let mut buf = vec![0u8; WINDOW];
    let (mut filled, mut base, mut eof) = (0usize, 0u64, false);
    while !eof || filled > 0 {
        while !eof && filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                eof = true;
            }
            filled += n;
        }
        let (chunks, consumed) = chunk::chunk_window(&buf[..filled], base, eof, params);
        out.extend(chunks.iter().map(to_ref));
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        base += consumed as u64;
        if eof && filled == 0 {
            break;
        }
    }
    Ok((out, None))
}
