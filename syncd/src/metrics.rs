//! Prometheus metrics (`--metrics ADDR`): the series a watching push or a `serve` exports,
//! all named `syncd_*`, and the exporter that serves them at `http://ADDR/metrics`.
//!
//! The recording functions are cheap no-ops until [`install`] sets the global recorder,
//! so the drivers call them unconditionally. Gauges that describe the daemon's state (lag,
//! pending, bwlimit, converged, reconnects) are sampled from the control state
//! ([`crate::control::Shared`]) every 250 ms, so that they stay live while a batch runs.
//! Counters are added where the work happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};

use crate::control::Shared;

/// The exporter could not be started.
#[derive(Debug, thiserror::Error)]
#[error("--metrics {addr}: {message}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub message: String,
}

/// Every series, with its help text (names without labels).
pub const SERIES: &[(&str, &str)] = &[
    (
        "syncd_sent_bytes_total",
        "Bytes sent: kind=wire (frames plus packet overhead) or kind=logical (chunk data before compression and deltas)",
    ),
    (
        "syncd_received_bytes_total",
        "Bytes received on the wire by serve (UDP payload)",
    ),
    ("syncd_chunks_sent_total", "Chunks sent by a watching push"),
    (
        "syncd_chunks_received_total",
        "Chunks received over the wire by serve",
    ),
    (
        "syncd_chunks_deduplicated_total",
        "Chunks the receiver already had (not sent)",
    ),
    (
        "syncd_deduplicated_bytes_total",
        "Bytes the receiver already had (not sent)",
    ),
    (
        "syncd_files_synced_total",
        "Files written at the destination",
    ),
    ("syncd_batches_total", "Pushes run by a watching push"),
    (
        "syncd_lag_seconds",
        "Age of the oldest change not yet applied remotely (0 when none)",
    ),
    (
        "syncd_pending_files",
        "Files changed and not yet applied remotely",
    ),
    ("syncd_pending_bytes", "Their bytes"),
    (
        "syncd_bwlimit_bytes_per_second",
        "The bandwidth cap (0 = unlimited)",
    ),
    (
        "syncd_converged",
        "1 when both roots are equal and nothing is pending",
    ),
    (
        "syncd_reconnects_total",
        "Failed pushes retried after a backoff",
    ),
    ("syncd_errors_total", "Failed pushes or sessions"),
    (
        "syncd_watch_events_total",
        "inotify events taken into batches",
    ),
    (
        "syncd_overflow_rescans_total",
        "Full rescans forced by an inotify queue overflow or error",
    ),
];

/// Starts the exporter on `addr` (inside the current tokio runtime) and samples `shared`
/// into the state gauges. Call once per process.
pub fn install(addr: SocketAddr, shared: Arc<Shared>) -> Result<(), MetricsError> {
    let err = |message: String| MetricsError { addr, message };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| err(e.to_string()))?;
    for (name, help) in SERIES {
        metrics::describe_counter!(*name, *help);
    }
    // Every counter exists from the start (a scrape before the first batch shows 0).
    for kind in ["wire", "logical"] {
        counter!("syncd_sent_bytes_total", "kind" => kind).increment(0);
    }
    for name in [
        "syncd_received_bytes_total",
        "syncd_chunks_sent_total",
        "syncd_chunks_received_total",
        "syncd_chunks_deduplicated_total",
        "syncd_deduplicated_bytes_total",
        "syncd_files_synced_total",
        "syncd_batches_total",
        "syncd_errors_total",
        "syncd_watch_events_total",
        "syncd_overflow_rescans_total",
    ] {
        counter!(name).increment(0);
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            sample(&shared);
        }
    });
    Ok(())
}

/// Sets the state gauges from the control state.
fn sample(shared: &Shared) {
    let s = shared.status();
    gauge!("syncd_lag_seconds").set(s.lag_seconds.unwrap_or(0.0));
    gauge!("syncd_pending_files").set(s.pending_files as f64);
    gauge!("syncd_pending_bytes").set(s.pending_bytes as f64);
    gauge!("syncd_bwlimit_bytes_per_second").set(s.bwlimit.unwrap_or(0) as f64);
    gauge!("syncd_converged").set(if s.converged { 1.0 } else { 0.0 });
    counter!("syncd_reconnects_total").absolute(s.reconnects);
}

/// What one batch of a watching push sent (plain numbers, so that this module depends on
/// no push type: `push` uses it, not the other way round).
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchSent {
    /// Estimated wire bytes.
    pub wire_bytes: u64,
    /// Raw bytes of the chunks sent.
    pub logical_bytes: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// Chunks the receiver already had.
    pub chunks_deduplicated: u64,
    /// Bytes the receiver already had.
    pub bytes_deduplicated: u64,
    /// Files written on the receiver.
    pub files: u64,
}

/// A watching push's batch finished.
pub fn batch_pushed(b: BatchSent) {
    counter!("syncd_batches_total").increment(1);
    counter!("syncd_sent_bytes_total", "kind" => "wire").increment(b.wire_bytes);
    counter!("syncd_sent_bytes_total", "kind" => "logical").increment(b.logical_bytes);
    counter!("syncd_chunks_sent_total").increment(b.chunks);
    counter!("syncd_chunks_deduplicated_total").increment(b.chunks_deduplicated);
    counter!("syncd_deduplicated_bytes_total").increment(b.bytes_deduplicated);
    counter!("syncd_files_synced_total").increment(b.files);
}

/// A `serve` session finished: what it wrote and reused, and the wire bytes it received.
pub fn session_received(t: &crate::proto::codec::Totals, wire_bytes: u64) {
    counter!("syncd_received_bytes_total").increment(wire_bytes);
    counter!("syncd_chunks_received_total").increment(t.chunks_received);
    counter!("syncd_chunks_deduplicated_total").increment(t.chunks_reused);
    counter!("syncd_deduplicated_bytes_total").increment(t.bytes_reused);
    counter!("syncd_files_synced_total").increment(t.files);
}

/// A push or session failed.
pub fn error() {
    counter!("syncd_errors_total").increment(1);
}

/// inotify events taken into a batch.
pub fn watch_events(n: u64) {
    counter!("syncd_watch_events_total").increment(n);
}

/// A full rescan forced by an overflow or an inotify error.
pub fn overflow_rescan() {
    counter!("syncd_overflow_rescans_total").increment(1);
}
