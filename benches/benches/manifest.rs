//! Manifest benchmarks on a generated tree of 10,000 files (100 dirs × 100 files of 0–8 KiB)
//! in tmpfs:
//! - `tree_build`: building the in-memory merkle [`Tree`] (encode + hash every node) from
//!   file nodes that are already chunked;
//! - `diff_in_memory`: [`diff`] of two in-memory trees that differ in one file;
//! - `refresh_cold`: [`scan::refresh`] into an empty store (walk, read, chunk, commit);
//! - `refresh_no_change`: the same refresh again (a parallel stat walk, no reads);
//! - `stored_diff_1_change` / `stored_root_compare`: [`diff`] of two stored manifests that
//!   differ in one file, and the root-hash compare that decides "identical" alone.
//!
//! Run: `cargo bench -p benches --bench manifest`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use benches::{Rng, append, copy_tree, generate_small_files};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use syncd::chunk::{ChunkParams, chunk};
use syncd::manifest::store::Store;
use syncd::manifest::{ChunkRef, Entry, FileNode, Kind, Node, Tree, diff, join};
use syncd::scan::{self, ScanOptions};

const DIRS: usize = 100;
const FILES: usize = 100;
const MAX_SIZE: usize = 8 << 10;

fn tmp_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("syncd-bench-{tag}-"))
        .tempdir_in(tmp_base())
        .expect("create a temporary directory")
}

/// The file nodes of the in-memory tree: `DIRS` × `FILES` files with their chunk lists.
fn file_nodes() -> Vec<(Vec<u8>, Vec<u8>, FileNode)> {
    let params = ChunkParams::default();
    let mut rng = Rng::new(7);
    let mut buf = vec![0u8; MAX_SIZE];
    let mut out = Vec::with_capacity(DIRS * FILES);
    for d in 0..DIRS {
        for f in 0..FILES {
            let len = (rng.next_u64() % (MAX_SIZE as u64 + 1)) as usize;
            rng.fill(&mut buf[..len]);
            let chunks = chunk(&buf[..len], params)
                .into_iter()
                .map(|c| ChunkRef {
                    id: c.id,
                    len: c.len,
                })
                .collect();
            out.push((
                format!("d{d:04}").into_bytes(),
                format!("f{f:04}").into_bytes(),
                FileNode {
                    size: len as u64,
                    mode: 0o100644,
                    mtime_ns: 1_700_000_000_000_000_000 + (d * FILES + f) as i64,
                    chunks,
                    link: None,
                    attrs: None,
                },
            ));
        }
    }
    out
}

/// Builds the merkle tree of files grouped in one level of directories (input sorted by
/// directory, then name).
fn build_tree(files: &[(Vec<u8>, Vec<u8>, FileNode)]) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut root_entries = Vec::new();
    let mut i = 0;
    while i < files.len() {
        let dir = &files[i].0;
        let mut entries = Vec::new();
        while i < files.len() && files[i].0 == *dir {
            let (_, name, f) = &files[i];
            let node = Node::File(f.clone());
            entries.push(Entry {
                name: name.clone(),
                kind: Kind::File,
                hash: node.hash(),
            });
            nodes.insert(join(dir, name), node);
            i += 1;
        }
        let node = Node::Dir {
            mode: 0o40755,
            entries,
            attrs: None,
        };
        root_entries.push(Entry {
            name: dir.clone(),
            kind: Kind::Dir,
            hash: node.hash(),
        });
        nodes.insert(dir.clone(), node);
    }
    nodes.insert(
        Vec::new(),
        Node::Dir {
            mode: 0o40755,
            entries: root_entries,
            attrs: None,
        },
    );
    Tree { nodes }
}

fn bench_in_memory(c: &mut Criterion) {
    let files = file_nodes();
    let mut g = c.benchmark_group("manifest_10k_in_memory");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("tree_build", |b| b.iter(|| build_tree(&files)));
    let a = build_tree(&files);
    let mut changed = files.clone();
    let victim = changed.len() / 2;
    changed[victim].2.size += 1;
    let b_tree = build_tree(&changed);
    g.bench_function("diff_in_memory_1_change", |b| {
        b.iter(|| {
            let d = diff(&a, &b_tree).expect("in-memory diff");
            assert_eq!(d.len(), 1);
            d
        })
    });
    g.finish();
}

fn refresh(root: &Path, home: &Path) -> scan::Summary {
    let canon = scan::canonical_root(root).expect("canonical root");
    let store = Store::open(home, &canon, false)
        .expect("open store")
        .into_store();
    scan::refresh(&canon, &store, &ScanOptions::default()).expect("refresh")
}

fn bench_store(c: &mut Criterion) {
    let work = tempdir("manifest");
    let a = work.path().join("a");
    let b = work.path().join("b");
    generate_small_files(&a, DIRS, FILES, MAX_SIZE, 2).expect("generate the tree");
    copy_tree(&a, &b).expect("cp -a");
    append(&b.join("d0050/f0050"), b"changed").expect("change one file");
    // Let the stat cache trust the files (it distrusts mtimes within 100 ms of a scan).
    std::thread::sleep(Duration::from_millis(200));

    let mut g = c.benchmark_group("manifest_10k_files");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("refresh_cold", |bench| {
        bench.iter_batched(
            || tempdir("home"),
            |home| {
                let s = refresh(&a, home.path());
                assert_eq!(s.hashed_files as usize, DIRS * FILES);
                home
            },
            BatchSize::PerIteration,
        )
    });

    let home = tempdir("home");
    refresh(&a, home.path());
    refresh(&b, home.path());
    g.bench_function("refresh_no_change", |bench| {
        bench.iter(|| {
            let s = refresh(&a, home.path());
            assert_eq!(s.hashed_files, 0);
            s
        })
    });

    let open = |dir: &Path| {
        let canon = scan::canonical_root(dir).expect("canonical root");
        Store::open_existing(home.path(), &canon, false)
            .expect("open store")
            .expect("a stored manifest")
    };
    let (sa, sb) = (open(&a), open(&b));
    g.bench_function("stored_diff_1_change", |bench| {
        bench.iter(|| {
            let (na, nb) = (
                sa.snapshot().expect("snapshot"),
                sb.snapshot().expect("snapshot"),
            );
            let d = diff(&na, &nb).expect("stored diff");
            assert_eq!(d.len(), 1);
            d
        })
    });
    g.bench_function("stored_root_compare", |bench| {
        bench.iter(|| {
            let ra = sa.snapshot().expect("snapshot").root().expect("root");
            let rb = sb.snapshot().expect("snapshot").root().expect("root");
            ra == rb
        })
    });
    g.finish();
}

criterion_group!(benches, bench_in_memory, bench_store);
criterion_main!(benches);
