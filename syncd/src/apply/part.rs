//! Part files: a file is assembled next to its final path under a name only this receiver
//! recognises ([`crate::partname`]), resumed if an interrupted attempt at the same content
//! left one, written one verified chunk at a time (all-zero chunks left as holes), and
//! finished with metadata, a flush (an fsync, or one `syncfs` for a batch) and an atomic
//! rename.

use super::*;

/// The chunk a long run of zeros is cut into, if `node` has one: content-defined chunking
/// cuts zeros at the maximum length, so this looks for zeros of the file's longest chunk
/// length when that length occurs at least twice. One hash of one chunk per file at most,
/// so that fresh part files need not be read to find their holes.
pub(super) fn zero_run_chunk(node: &FileNode) -> Option<ChunkRef> {
    let longest = node.chunks.iter().map(|c| c.len).max()?;
    // At least two chunks of that length.
    node.chunks.iter().filter(|c| c.len == longest).nth(1)?;
    let zero = ChunkRef {
        id: ChunkId::of(&vec![0; longest as usize]),
        len: longest,
    };
    node.chunks.contains(&zero).then_some(zero)
}

/// A file being assembled in its part file. Write every chunk (or find it
/// [present](PartFile::present)), then [`finish`](PartFile::finish). Dropping it keeps the
/// part file for a later resume; [`abort`](PartFile::abort) removes it.
#[derive(Debug)]
pub struct PartFile {
    target: Target,
    rel: Vec<u8>,
    node: FileNode,
    offsets: Vec<u64>,
    done: Vec<bool>,
    dest: PathBuf,
    part: PathBuf,
    file: File,
    resumed: bool,
    /// The file already has its final length (set, or written up to the end).
    sized: bool,
}

impl PartFile {
    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The final relative path.
    pub fn rel(&self) -> &[u8] {
        &self.rel
    }

    /// The part file's own path.
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Whether the part file existed already (an earlier attempt at the same content), so
    /// that [`PartFile::present`] is worth calling.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Which chunks (by index into the node's chunks) are already correct in the part file.
    /// A resumed part file is read and each chunk span hashed; a hole reads as zeros and so
    /// matches only an all-zero chunk. A fresh part file is not read: it is all holes, so
    /// the zero runs of a sparse file are present (recognised as repeated chunks of the
    /// file's longest chunk length, which is how content-defined chunking cuts long zero
    /// runs), and otherwise only what was written through this handle counts.
    pub fn present(&mut self) -> Result<Vec<bool>, ApplyError> {
        if self.resumed {
            let mut buf = Vec::new();
            for (i, c) in self.node.chunks.iter().enumerate() {
                if self.done[i] {
                    continue;
                }
                buf.resize(c.len as usize, 0);
                self.file
                    .read_exact_at(&mut buf, self.offsets[i])
                    .map_err(|e| io_err(&self.rel, "read part file for", e))?;
                self.done[i] = ChunkId::of(&buf) == c.id;
            }
        } else if let Some(zero) = zero_run_chunk(&self.node) {
            for (done, c) in self.done.iter_mut().zip(&self.node.chunks) {
                *done |= *c == zero;
            }
        }
        Ok(self.done.clone())
    }

    /// Writes `chunk` as chunk `index` at its offset, if its id (computed when it was
    /// verified) and length are that chunk's; nothing is written otherwise. An all-zero
    /// chunk is not written (the file stays sparse), unless a resumed part file holds other
    /// bytes there.
    pub fn write_chunk(&mut self, index: usize, chunk: &Verified) -> Result<(), ApplyError> {
        let data = chunk.bytes();
        let Some(c) = self.node.chunks.get(index) else {
            return Err(ApplyError::NoSuchChunk {
                path: self.rel.clone(),
                index,
                count: self.node.chunks.len(),
            });
        };
        let actual = *chunk.id();
        if actual != c.id || data.len() != c.len as usize {
            return Err(ApplyError::ChunkMismatch {
                path: self.rel.clone(),
                index,
                expected: c.id,
                expected_len: c.len,
                actual,
                actual_len: data.len(),
            });
        }
        if self.done[index] {
            return Ok(());
        }
        let offset = self.offsets[index];
        let mut write = !data.iter().all(|&b| b == 0);
        if !write && self.resumed {
            // An earlier attempt may have been cut off in the middle of writing here.
            let mut old = vec![0; data.len()];
            self.file
                .read_exact_at(&mut old, offset)
                .map_err(|e| io_err(&self.rel, "read part file for", e))?;
            write = old.iter().any(|&b| b != 0);
        }
        if write {
            self.file
                .write_all_at(data, offset)
                .map_err(|e| io_err(&self.rel, "write", e))?;
            self.sized |= offset + data.len() as u64 == self.node.size;
        }
        self.done[index] = true;
        Ok(())
    }

    /// Writes a whole file's worth of chunks at once, if they are exactly the node's (by id
    /// and length); nothing is written otherwise. Runs of chunks that are not all zeros go
    /// in one write each, and zero chunks stay holes (a resumed part file is written
    /// whole: its holes may hold an earlier attempt's bytes). For the first local copy
    /// ([`crate::push`]), which has the file in memory from the scan.
    pub fn write_chunked(&mut self, data: &Chunked) -> Result<(), ApplyError> {
        let chunks = data.chunks();
        let n = chunks.len().max(self.node.chunks.len());
        if let Some(index) = (0..n).find(|&i| {
            let (a, b) = (chunks.get(i), self.node.chunks.get(i));
            !matches!((a, b), (Some(a), Some(b)) if a.id == b.id && a.len == b.len)
        }) {
            let (a, b) = (chunks.get(index), self.node.chunks.get(index));
            return Err(ApplyError::ChunkMismatch {
                path: self.rel.clone(),
                index,
                expected: b.map_or(ChunkId([0; 32]), |c| c.id),
                expected_len: b.map_or(0, |c| c.len),
                actual: a.map_or(ChunkId([0; 32]), |c| c.id),
                actual_len: a.map_or(0, |c| c.len as usize),
            });
        }
        let bytes = data.bytes();
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for c in chunks {
            let r = c.offset as usize..c.offset as usize + c.len as usize;
            if !self.resumed && bytes[r.clone()].iter().all(|&b| b == 0) {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => runs.push(r),
            }
        }
        for r in runs {
            self.file
                .write_all_at(&bytes[r.clone()], r.start as u64)
                .map_err(|e| io_err(&self.rel, "write", e))?;
            self.sized |= r.end as u64 == self.node.size;
        }
        self.done.iter_mut().for_each(|d| *d = true);
        Ok(())
    }

    /// Completes the file: [`PartFile::seal`], an fsync, and [`Sealed::place`]. A batch of
    /// files is better sealed together, flushed with one [`flush_together`], and placed.
    pub fn finish(self, meta: &Meta) -> Result<fs::Metadata, ApplyError> {
        let sealed = self.seal(meta)?;
        sealed
            .part
            .file
            .sync_all()
            .map_err(|e| io_err(&sealed.part.rel, "fsync", e))?;
        sealed.place()
    }

    /// Checks that every chunk is in place and applies owner (as root), xattrs, mode and
    /// mtime: the part file is then exactly the file to be, but not yet durable nor at its
    /// final path.
    pub fn seal(self, meta: &Meta) -> Result<Sealed, ApplyError> {
        let missing = self.done.iter().filter(|d| !**d).count();
        if let Some(first) = self.done.iter().position(|d| !*d) {
            return Err(ApplyError::Incomplete {
                path: self.rel,
                missing,
                total: self.done.len(),
                first,
            });
        }
        let rel = &self.rel;
        if !self.sized {
            // Ends in a hole that was not written: give the file its length.
            self.file
                .set_len(self.node.size)
                .map_err(|e| io_err(rel, "size", e))?;
        }
        apply_owner_xattrs(&self.file, meta, self.target.as_root, rel)?;
        self.file
            .set_permissions(Permissions::from_mode(meta.mode & 0o7777))
            .map_err(|e| io_err(rel, "set mode of", e))?;
        // Last: nothing below writes to the file again.
        filetime::set_file_handle_times(&self.file, None, Some(meta.mtime()))
            .map_err(|e| io_err(rel, "set mtime of", e))?;
        Ok(Sealed { part: self })
    }

    /// Gives up on this file and removes its part file (for errors that make it useless,
    /// such as a full disk).
    pub fn abort(self) -> Result<(), ApplyError> {
        let PartFile {
            rel, part, file, ..
        } = self;
        drop(file);
        match fs::remove_file(&part) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(&rel, "remove part file for", e))
            }
            _ => Ok(()),
        }
    }
}

impl Target {
    /// Starts assembling the file `rel` with content `node`: creates missing parent
    /// directories (mode 0755, fixed later by [`Target::set_dir_meta`]) and opens the part
    /// file, reusing one left by an interrupted attempt at the same content.
    pub fn begin_file(&self, rel: &[u8], node: &FileNode) -> Result<PartFile, ApplyError> {
        Self::check_entry(rel)?;
        let mut offsets = Vec::with_capacity(node.chunks.len());
        let mut sum = 0u64;
        let mut empty_chunk = false;
        for c in &node.chunks {
            offsets.push(sum);
            sum = sum.saturating_add(u64::from(c.len));
            empty_chunk |= c.len == 0;
        }
        if sum != node.size || empty_chunk {
            return Err(ApplyError::BadNode {
                path: rel.to_vec(),
                size: node.size,
                sum,
            });
        }
        let dest = self.place(rel)?;
        let part = self.abs(parent(rel)).join(OsStr::from_bytes(
            &self.key.name(file_name(rel), Temp::File),
        ));
        let open = |create_new: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create_new)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&part)
        };
        let create = || open(true).map_err(|e| io_err(rel, "create part file for", e));
        // O_CREAT|O_EXCL|O_NOFOLLOW makes a new regular file or fails: the common case
        // needs no other check. Something already there is inspected before it is opened.
        let (file, resumed) = match open(true) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let regular = fs::symlink_metadata(&part).is_ok_and(|m| m.is_file());
                match regular.then(|| open(false)) {
                    Some(Ok(f)) if f.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1) => {
                        (f, true)
                    }
                    // Our own name but unusable: a symlink or a directory, left read-only
                    // by a failed `finish`, or linked to another name (writing would
                    // change that file too). Start over.
                    _ => {
                        remove_any(self, &part, rel)?;
                        (create()?, false)
                    }
                }
            }
            Err(e) => return Err(io_err(rel, "create part file for", e)),
        };
        if resumed {
            // Cut off what a longer earlier attempt left; a fresh file grows as it is
            // written and gets its length in `finish` only if it ends in a hole.
            file.set_len(node.size)
                .map_err(|e| io_err(rel, "size part file for", e))?;
        }
        Ok(PartFile {
            target: self.clone(),
            rel: rel.to_vec(),
            done: vec![false; node.chunks.len()],
            node: node.clone(),
            offsets,
            dest,
            part,
            file,
            resumed,
            sized: resumed || node.size == 0,
        })
    }
}

/// A part file with its content and attributes complete ([`PartFile::seal`]), waiting to be
/// made durable and renamed into place. Dropping it keeps the part file, as dropping a
/// [`PartFile`] does.
#[derive(Debug)]
pub struct Sealed {
    part: PartFile,
}

impl Sealed {
    /// The final relative path.
    pub fn rel(&self) -> &[u8] {
        &self.part.rel
    }

    /// Renames the part file onto the final path (removing a directory tree there first).
    /// Call it only once the file's data is durable (an fsync, or [`flush_together`]): a
    /// crash then finds either the old file or the whole new one there, never a torn one.
    /// The directory is made durable later, once for all its files, by
    /// [`Target::sync_dirs`]. Returns the file's final metadata.
    pub fn place(self) -> Result<fs::Metadata, ApplyError> {
        let p = self.part;
        let rel = &p.rel;
        // The tree may have changed since `begin_file`.
        if !p.target.ancestors(rel, false)? {
            return Err(io_err(rel, "rename into place", not_found()));
        }
        // A directory at the destination (a type change) is removed first; renaming a file
        // over one fails, so try the rename before looking.
        if fs::rename(&p.part, &p.dest).is_err() {
            clear_dir(&p.target, &p.dest, rel)?;
            fs::rename(&p.part, &p.dest).map_err(|e| io_err(rel, "rename into place", e))?;
        }
        p.target.sync_dir(rel)?;
        // The stat of the file now at its final path, for the receiver's stat cache.
        p.file.metadata().map_err(|e| io_err(rel, "inspect", e))
    }
}

/// Makes the data and attributes of every sealed file durable at once: one `syncfs(2)` per
/// filesystem among them, instead of an fsync per file (44k fsyncs made a push onto ext4
/// 3× slower than `rsync -a; sync`). `syncfs` returns once every dirty page and inode of
/// that filesystem is on disk, and reports a writeback error that happened since the
/// descriptor was opened (Linux ≥ 5.8), so a file whose write-back failed is never renamed
/// into place. Where it fails, each file is fsynced on its own, which names the one that
/// failed.
pub fn flush_together(files: &[Sealed]) -> Vec<Result<(), ApplyError>> {
    let mut flushed = Flushed::default();
    files
        .iter()
        .map(|f| {
            let p = &f.part;
            if flushed.syncfs(&p.file) {
                Ok(())
            } else {
                p.file.sync_all().map_err(|e| io_err(&p.rel, "fsync", e))
            }
        })
        .collect()
}
