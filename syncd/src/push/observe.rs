//! The sender's link observer: four times a second it tells the compression policy
//! ([`Adapt`]) what the link carried, how long the writers waited, the round-trip time and
//! how idle the machine's CPUs were, and reports progress.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::send::SendStats;
use super::{Progress, Sent, lock};
use crate::proto::adapt::Adapt;

/// Observes the link four times a second until aborted: what the transport sent (QUIC's
/// UDP bytes, else what the `senders` data workers wrote), how long they waited, the
/// round-trip time and the machine's idle CPU share go to `adapt`; `progress` is called
/// with the counters and the `scanned` (files, bytes; zero while the scan runs).
pub(super) async fn observe(
    stats: Arc<SendStats>,
    adapt: Arc<Mutex<Adapt>>,
    progress: Option<Progress>,
    conn: Option<quinn::Connection>,
    scanned: Arc<(AtomicU64, AtomicU64)>,
    senders: usize,
) {
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut udp_last = 0u64;
    let mut cpu = cpu_times();
    // The round trip of the handshake is the path's before any data queued: the
    // baseline that shows a queue building. (Taken after the first window, it
    // already included the queue on a 100 Mbit/s link, and no queue was ever seen.)
    if let Some(c) = &conn {
        lock(&adapt).observe_rtt(c.rtt().as_secs_f64());
    }
    // The first window ends a period after the start (a plain `interval` ticks at
    // once, and a window of no time told the policy nothing).
    let period = Duration::from_millis(250);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let wire = stats.wire.load(Ordering::Relaxed);
        let wait = stats.wait_ns.load(Ordering::Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64();
        let cpu_now = cpu_times();
        let idle = match (cpu, cpu_now) {
            (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                Some((i1 - i0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        cpu = cpu_now;
        // What the transport sent, when it is QUIC: what we wrote may only have
        // gone into its send buffer.
        let sent = match &conn {
            Some(c) => {
                let udp = c.stats().udp_tx.bytes;
                udp.saturating_sub(std::mem::replace(&mut udp_last, udp))
            }
            None => wire - last.1,
        };
        let mut a = lock(&adapt);
        if let Some(c) = &conn {
            a.observe_rtt(c.rtt().as_secs_f64());
        }
        a.observe_link(sent, secs, (wait - last.2) as f64 / 1e9, senders, idle);
        drop(a);
        if let Some(Progress(p)) = &progress {
            let (files_asked, files_sent) = {
                let f = super::lock(&stats.files);
                (f.asked, f.sent)
            };
            p(&Sent {
                files_asked,
                files_sent,
                raw: stats.raw.load(Ordering::Relaxed),
                wire: stats.wire.load(Ordering::Relaxed),
                chunks: stats.chunks.load(Ordering::Relaxed),
                scanned_files: scanned.0.load(Ordering::Relaxed),
                scanned_bytes: scanned.1.load(Ordering::Relaxed),
            });
        }
        last = (now, wire, wait);
    }
}

/// The machine's (idle + iowait, total) CPU time from `/proc/stat`, in clock ticks.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().take(8).sum()))
}
