//! Chunk+hash throughput on 1 GiB of deterministic pseudo-random data (issue #2's goal:
//! ≥ 1.5 GB/s on 2 cores), with baselines for context:
//! - `chunk`: parallel FastCDC cut points + parallel BLAKE3 chunk ids (what a scan does);
//! - `cut_points`: the parallel cut points alone;
//! - `cut_points_sequential`: the reference sequential FastCDC alone (one core);
//! - `blake3`: BLAKE3 of the whole buffer on one core, and with rayon on all cores.
//!
//! Run: `cargo bench -p benches --bench chunk`. `CHUNK_BENCH_MIB` shrinks the input.

use std::time::Duration;

use benches::random_bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use syncd::chunk::{ChunkParams, chunk, cut_points, cut_points_sequential};

fn input_len() -> usize {
    std::env::var("CHUNK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024)
        << 20
}

fn bench_chunk(c: &mut Criterion) {
    let data = random_bytes(input_len(), 0x5eed);
    let params = ChunkParams::default();
    let mut g = c.benchmark_group(format!("chunk_{}MiB", data.len() >> 20));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        // 10 samples of ~0.5–2 s each: about 15 s per function on 2 cores.
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk", |b| b.iter(|| chunk(&data, params)));
    g.bench_function("cut_points", |b| b.iter(|| cut_points(&data, params)));
    g.bench_function("cut_points_sequential", |b| {
        b.iter(|| cut_points_sequential(&data, params))
    });
    g.bench_function("blake3", |b| b.iter(|| blake3::hash(&data)));
    g.bench_function("blake3_rayon", |b| {
        b.iter(|| blake3::Hasher::new().update_rayon(&data).finalize())
    });
    g.finish();
}

criterion_group!(benches, bench_chunk);
criterion_main!(benches);
