//! The canonical node encoding: [`Node::encode`], [`Node::decode`] (only what the encoder
//! produces), [`Node::hash`], and the directory-listing decoder the codec shares.

use super::*;

impl FileNode {
    /// The canonical encoding of [`Node::File`] holding this.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag_at = out.len();
        out.push(match self.link {
            None => Kind::File.tag(),
            Some(_) => LINKED_FILE_TAG,
        });
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.id.0);
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        if let Some(link) = &self.link {
            out.extend_from_slice(&(link.len() as u32).to_le_bytes());
            out.extend_from_slice(link);
        }
        encode_attrs(self.attrs.as_ref(), tag_at, out);
    }
}

/// The canonical encoding of [`Node::Symlink`] with this target and attributes.
pub fn encode_symlink(target: &[u8], attrs: Option<&Hash>, out: &mut Vec<u8>) {
    let tag_at = out.len();
    out.push(Kind::Symlink.tag());
    out.extend_from_slice(&(target.len() as u32).to_le_bytes());
    out.extend_from_slice(target);
    encode_attrs(attrs, tag_at, out);
}

/// Ends a node's encoding with its attributes digest, if any, flagged in its tag at
/// `tag_at`: a node without one encodes (and hashes) as before attributes were covered.
pub(crate) fn encode_attrs(attrs: Option<&Hash>, tag_at: usize, out: &mut Vec<u8>) {
    if let Some(a) = attrs {
        out[tag_at] |= ATTRS_FLAG;
        out.extend_from_slice(&a.0);
    }
}

/// Set in a node's tag when its encoding ends with a 32-byte attributes digest.
pub(crate) const ATTRS_FLAG: u8 = 0x80;

/// The tag of a file node that is a hard link ([`FileNode::link`]): a plain file's
/// encoding with the tag replaced, followed by the length-prefixed link path. Never a
/// directory entry's kind, which is [`Kind::File`] either way.
const LINKED_FILE_TAG: u8 = 4;

/// Decoding stops early rather than allocate for counts the input cannot hold.
const FILE_CHUNK_BYTES: usize = 32 + 4;

impl Node {
    /// The node's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Node::File(_) => Kind::File,
            Node::Symlink { .. } => Kind::Symlink,
            Node::Dir { .. } => Kind::Dir,
        }
    }

    /// Canonical encoding (little-endian, length-prefixed). The hash is taken over this.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Node::File(f) => f.encode(out),
            Node::Symlink { target, attrs } => encode_symlink(target, attrs.as_ref(), out),
            Node::Dir {
                mode,
                entries,
                attrs,
            } => {
                let tag_at = out.len();
                out.push(Kind::Dir.tag());
                out.extend_from_slice(&mode.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&(e.name.len() as u32).to_le_bytes());
                    out.extend_from_slice(&e.name);
                    out.push(e.kind.tag());
                    out.extend_from_slice(&e.hash.0);
                }
                encode_attrs(attrs.as_ref(), tag_at, out);
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// The node hash: BLAKE3 of [`Node::encode`].
    pub fn hash(&self) -> Hash {
        Hash(*blake3::hash(&self.to_bytes()).as_bytes())
    }

    /// Decodes and validates one node. Never panics and never allocates more than the
    /// input's length could justify.
    pub fn decode(bytes: &[u8]) -> Result<Node, DecodeError> {
        let mut r = Reader::new(bytes);
        let flagged = r.u8()?;
        let tag = flagged & !ATTRS_FLAG;
        let kind = match tag {
            LINKED_FILE_TAG => Kind::File,
            _ => Kind::from_tag(tag).ok_or(DecodeError::BadTag(tag))?,
        };
        let node = match kind {
            Kind::File => {
                let size = r.u64()?;
                let mode = r.u32()?;
                let mtime_ns = r.u64()? as i64;
                let n = r.count(FILE_CHUNK_BYTES)?;
                let mut chunks = Vec::with_capacity(n);
                let mut sum = 0u64;
                for _ in 0..n {
                    let id = ChunkId(r.array()?);
                    let len = r.u32()?;
                    if len == 0 {
                        return Err(DecodeError::SizeMismatch { size, sum });
                    }
                    sum += u64::from(len);
                    chunks.push(ChunkRef { id, len });
                }
                if sum != size {
                    return Err(DecodeError::SizeMismatch { size, sum });
                }
                let link = if tag == LINKED_FILE_TAG {
                    let n = r.count(1)?;
                    let link = r.take(n)?.to_vec();
                    check_path(&link)?;
                    Some(link)
                } else {
                    None
                };
                Node::File(FileNode {
                    size,
                    mode,
                    mtime_ns,
                    chunks,
                    link,
                    attrs: read_attrs(&mut r, flagged)?,
                })
            }
            Kind::Symlink => {
                let n = r.count(1)?;
                let target = r.take(n)?.to_vec();
                Node::Symlink {
                    target,
                    attrs: read_attrs(&mut r, flagged)?,
                }
            }
            Kind::Dir => {
                let (mode, entries) = decode_listing(
                    &mut r,
                    |name, kind, hash| Entry {
                        name,
                        kind,
                        hash: Hash(hash),
                    },
                    |e| &e.name,
                )?;
                Node::Dir {
                    mode,
                    entries,
                    attrs: read_attrs(&mut r, flagged)?,
                }
            }
        };
        if !r.rest().is_empty() {
            return Err(DecodeError::Trailing(r.rest().len()));
        }
        Ok(node)
    }
}

/// A directory listing after its tag: the mode, then entries (name, kind, an `N`-byte
/// hash) strictly sorted by name, each made by `entry`. [`Node::decode`] reads directories
/// with whole hashes, the codec's listings ([`crate::proto::Offered`]) with short ones.
pub fn decode_listing<T, const N: usize>(
    r: &mut Reader<'_>,
    entry: impl Fn(Vec<u8>, Kind, [u8; N]) -> T,
    name: impl Fn(&T) -> &[u8],
) -> Result<(u32, Vec<T>), DecodeError> {
    let mode = r.u32()?;
    let n = r.count(4 + 1 + N)?;
    let mut entries: Vec<T> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(1)?;
        let child = r.take(len)?.to_vec();
        check_name(&child)?;
        let tag = r.u8()?;
        let kind = Kind::from_tag(tag).ok_or(DecodeError::BadTag(tag))?;
        let hash = r.array()?;
        if entries.last().is_some_and(|prev| name(prev) >= &child[..]) {
            return Err(DecodeError::Unsorted);
        }
        entries.push(entry(child, kind, hash));
    }
    Ok((mode, entries))
}

/// The attributes digest that ends a node whose tag (`flagged`) says it has one.
pub fn read_attrs(r: &mut Reader<'_>, flagged: u8) -> Result<Option<Hash>, DecodeError> {
    Ok(if flagged & ATTRS_FLAG != 0 {
        Some(Hash(r.array()?))
    } else {
        None
    })
}

impl From<Short> for DecodeError {
    fn from(_: Short) -> DecodeError {
        DecodeError::Truncated
    }
}
