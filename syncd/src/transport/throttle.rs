//! The bandwidth throttle: a token bucket over wire bytes shared by every stream of a
//! connection, and the per-packet overhead estimate it charges.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::*;
use crate::lock::lock;

/// Estimated bytes on the wire for `payload` bytes written to QUIC streams.
///
/// Per full packet of [`PAYLOAD_PER_PACKET`] stream bytes we add [`OVERHEAD_PER_PACKET`]:
/// IPv4 (20) + UDP (8) + QUIC short header (1 + 8-byte connection id + up to 4-byte
/// packet number) + AEAD tag (16) + STREAM frame header (~5). IPv6 adds 20 more per
/// packet, which this estimate ignores (an error of ~1.4%).
pub fn wire_bytes(payload: u64) -> u64 {
    payload + payload.div_ceil(PAYLOAD_PER_PACKET) * OVERHEAD_PER_PACKET
}

/// Stream bytes assumed per packet by [`wire_bytes`] (a 1452-byte UDP payload minus
/// QUIC overhead).
pub const PAYLOAD_PER_PACKET: u64 = 1390;

/// Bytes of overhead assumed per packet by [`wire_bytes`].
pub const OVERHEAD_PER_PACKET: u64 = 62;

/// A bandwidth cap shared by every stream of a connection (or of several connections):
/// cheap to clone, all clones share one [`TokenBucket`].
///
/// Call [`Throttle::write_all`] instead of `SendStream::write_all`, or call
/// [`Throttle::acquire`] before each write of at most [`Throttle::piece`] bytes. Uses
/// tokio's clock (so tests may pause time).
#[derive(Debug, Clone)]
pub struct Throttle(Arc<Mutex<TokenBucket>>);

impl Throttle {
    /// A throttle at `rate_bytes_per_sec` wire bytes per second (`0` = unlimited), with
    /// [`TokenBucket::default_burst`].
    pub fn new(rate_bytes_per_sec: u64) -> Throttle {
        Throttle(Arc::new(Mutex::new(TokenBucket::with_default_burst(
            rate_bytes_per_sec,
        ))))
    }

    /// Changes the rate at runtime (e.g. from the control socket); `0` = unlimited.
    pub fn set_rate(&self, rate_bytes_per_sec: u64) {
        let now = tokio::time::Instant::now().into_std();
        self.bucket().set_rate(
            now,
            rate_bytes_per_sec,
            TokenBucket::default_burst(rate_bytes_per_sec),
        );
    }

    /// The current rate in bytes per second (`0` = unlimited).
    pub fn rate(&self) -> u64 {
        self.bucket().rate()
    }

    /// The largest write to make after one [`Throttle::acquire`] to keep every 1-second
    /// window within ±5% of the rate.
    pub fn piece(&self) -> usize {
        TokenBucket::recommended_piece(self.rate())
    }

    /// Waits until `payload` stream bytes (plus their estimated packet overhead) may be
    /// sent. Returns immediately when unlimited.
    pub async fn acquire(&self, payload: usize) {
        let now = tokio::time::Instant::now().into_std();
        let delay = self.bucket().reserve(now, wire_bytes(payload as u64));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Writes all of `buf` to `stream`, in pieces of at most [`Throttle::piece`] bytes,
    /// waiting for the bucket before each piece.
    pub async fn write_all<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
        buf: &[u8],
    ) -> std::io::Result<()> {
        let piece = self.piece().max(1);
        for part in buf.chunks(piece) {
            self.acquire(part.len()).await;
            stream.write_all(part).await?;
        }
        Ok(())
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        // The bucket's state is always consistent (no panics inside), so a poisoned
        // lock is still usable.
        lock(&self.0)
    }
}
