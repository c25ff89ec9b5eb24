//! A sans-IO token bucket for `--bwlimit`, counting bytes.
//!
//! [`TokenBucket`] decides *how long a sender must wait*; it never sleeps and never reads
//! a clock: every call takes `now` as an argument, so tests drive it with a simulated
//! clock. The async wrapper that actually sleeps lives in
//! [`transport::Throttle`](crate::transport::Throttle), which also decides what counts
//! as a "wire byte" (stream payload plus an estimate of per-packet overhead). This module
//! deliberately knows nothing about QUIC, packets or tokio.
//!
//! The model is a *reservation* (debt) bucket: [`TokenBucket::reserve`] always admits the
//! bytes and returns how long the caller must wait **before** sending them. Credit is
//! capped at `burst` bytes; debt is unbounded. Time is kept in integer nanoseconds, so
//! there is no floating-point drift over long transfers.
//!
//! Holding an average rate within ±5% in every 1-second window needs two things from the
//! caller, both provided by [`TokenBucket::default_burst`] and
//! [`TokenBucket::recommended_piece`]: a small burst (2% of a second's worth of bytes)
//! and writes split into pieces of at most ~1.6% of a second's worth. Then the bytes
//! admitted in any window `[t, t + 1s)` differ from the rate by at most
//! `burst + piece + rate × (sleep overshoot)`; see the tests.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Smallest burst [`TokenBucket::default_burst`] picks (a few packets).
pub const MIN_BURST: u64 = 4 * 1024;

/// A token bucket over bytes with a reservation model; `now` is always passed in.
///
/// ```
/// use std::time::{Duration, Instant};
/// use syncd::limit::TokenBucket;
///
/// let start = Instant::now();
/// let mut bucket = TokenBucket::new(1_000_000, 10_000); // 1 MB/s, 10 kB burst
/// assert_eq!(bucket.reserve(start, 10_000), Duration::ZERO); // the burst is free
/// // 100 kB more must wait 100 ms before it is sent.
/// assert_eq!(bucket.reserve(start, 100_000), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// Maximum saved credit, in bytes.
    burst: u64,
    /// Credit in nano-bytes (bytes × 10^9); negative means debt.
    credit: i128,
    /// When `credit` was last brought up to date.
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket admitting `rate_bytes_per_sec` on average with at most `burst_bytes` of
    /// saved credit. It starts full. A rate of `0` means unlimited: every call admits
    /// immediately.
    pub fn new(rate_bytes_per_sec: u64, burst_bytes: u64) -> TokenBucket {
        TokenBucket {
            rate: rate_bytes_per_sec,
            burst: burst_bytes,
            credit: i128::from(burst_bytes) * NANOS_PER_SEC,
            last: None,
        }
    }

    /// [`TokenBucket::new`] with [`TokenBucket::default_burst`].
    pub fn with_default_burst(rate_bytes_per_sec: u64) -> TokenBucket {
        TokenBucket::new(
            rate_bytes_per_sec,
            TokenBucket::default_burst(rate_bytes_per_sec),
        )
    }

    /// The burst used by default: 20 ms worth of bytes (2% of a 1-second window), at
    /// least [`MIN_BURST`]. Large enough to absorb timer overshoot of a few ms without
    /// losing average rate, small enough to keep every 1-second window within ±5%.
    pub fn default_burst(rate_bytes_per_sec: u64) -> u64 {
        (rate_bytes_per_sec / 50).max(MIN_BURST)
    }

    /// The largest single write a caller should make for the ±5%-per-second guarantee:
    /// ~15 ms worth of bytes, between 1 KiB and 256 KiB. For unlimited rates, 256 KiB.
    pub fn recommended_piece(rate_bytes_per_sec: u64) -> usize {
        const MAX_PIECE: u64 = 256 * 1024;
        let piece = if rate_bytes_per_sec == 0 {
            MAX_PIECE
        } else {
            (rate_bytes_per_sec / 64).clamp(1024, MAX_PIECE)
        };
        usize::try_from(piece).unwrap_or(usize::MAX)
    }

    /// The current rate in bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The current burst in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Changes the rate and burst at `now`. Credit earned so far is kept at the old rate,
    /// capped at the new burst; outstanding debt (in bytes) is kept and is paid off at the
    /// new rate. Switching to unlimited (`0`) forgives any debt.
    pub fn set_rate(&mut self, now: Instant, rate_bytes_per_sec: u64, burst_bytes: u64) {
        self.refill(now);
        let was_unlimited = self.rate == 0;
        self.rate = rate_bytes_per_sec;
        self.burst = burst_bytes;
        let cap = i128::from(burst_bytes) * NANOS_PER_SEC;
        if rate_bytes_per_sec == 0 || was_unlimited {
            self.credit = cap;
        } else {
            self.credit = self.credit.min(cap);
        }
    }

    /// Admits `n` bytes and returns how long the caller must wait **before** sending
    /// them (zero if there was credit). Always succeeds; a large `n` simply returns a
    /// long delay. Calls made while a previous delay is still running queue behind it,
    /// so several streams can share one bucket.
    pub fn reserve(&mut self, now: Instant, n: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.credit -= i128::from(n) * NANOS_PER_SEC;
        self.delay_until_credit(0)
    }

    /// Takes `n` bytes only if they may be sent now; otherwise takes nothing and returns
    /// how long to wait before trying again. A request larger than the burst is granted
    /// once the bucket is full (and then goes into debt), so it cannot starve.
    pub fn try_take(&mut self, now: Instant, n: u64) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        self.refill(now);
        let needed = i128::from(n.min(self.burst)) * NANOS_PER_SEC;
        if self.credit >= needed {
            self.credit -= i128::from(n) * NANOS_PER_SEC;
            Ok(())
        } else {
            Err(self.delay_until_credit(needed))
        }
    }

    /// Bytes that could be sent at `now` without waiting (0 while in debt).
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        self.refill(now);
        u64::try_from(self.credit.max(0) / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }

    /// Brings `credit` up to `now`. Time never runs backwards: an earlier `now` than the
    /// last one seen adds nothing.
    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        if now > last {
            let elapsed = i128::try_from(now.duration_since(last).as_nanos()).unwrap_or(i128::MAX);
            let cap = i128::from(self.burst) * NANOS_PER_SEC;
            self.credit = self
                .credit
                .saturating_add(elapsed.saturating_mul(i128::from(self.rate)))
                .min(cap);
            self.last = Some(now);
        }
    }

    /// Time until `credit` reaches `target` nano-bytes at the current rate (rounded up).
    fn delay_until_credit(&self, target: i128) -> Duration {
        let missing = target - self.credit;
        if missing <= 0 || self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = i128::from(self.rate);
        let nanos = (missing + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic PRNG (xorshift64*), so the simulations are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Simulates a sender that reserves each write, sleeps the returned delay (plus a
    /// random scheduler overshoot of up to `jitter`), then sends. Returns the send times
    /// (as offsets from the start) and sizes.
    fn simulate(
        bucket: &mut TokenBucket,
        total: u64,
        mut size: impl FnMut(&mut Rng) -> u64,
        jitter: Duration,
        seed: u64,
    ) -> Vec<(Duration, u64)> {
        let start = Instant::now();
        let mut rng = Rng(seed);
        let mut now = start;
        let mut sent = 0;
        let mut log = Vec::new();
        while sent < total {
            let n = size(&mut rng);
            let delay = bucket.reserve(now, n);
            // A sender only oversleeps when it actually sleeps.
            let overshoot = if jitter.is_zero() || delay.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng.below(jitter.as_nanos() as u64))
            };
            // Also model some time spent doing the write itself.
            now += delay + overshoot + Duration::from_micros(rng.below(50));
            log.push((now - start, n));
            sent += n;
        }
        log
    }

    /// Asserts that every 1-second window starting at a multiple of `step` after the
    /// first second (and ending before the last send) holds `rate` bytes ±`tolerance`.
    fn assert_windows(log: &[(Duration, u64)], rate: u64, tolerance: f64, step: Duration) {
        let end = log.last().map(|(t, _)| *t).unwrap_or_default();
        let mut start = Duration::from_secs(1);
        let mut checked = 0;
        while start + Duration::from_secs(1) <= end {
            let stop = start + Duration::from_secs(1);
            let bytes: u64 = log
                .iter()
                .filter(|(t, _)| *t >= start && *t < stop)
                .map(|(_, n)| n)
                .sum();
            let ratio = bytes as f64 / rate as f64;
            assert!(
                (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
                "window [{start:?}, {stop:?}): {bytes} bytes, expected {rate} ±{:.0}% (ratio {ratio:.4})",
                tolerance * 100.0
            );
            checked += 1;
            start += step;
        }
        assert!(checked > 10, "only {checked} windows checked");
    }

    #[test]
    fn holds_rate_within_5_percent_per_second_with_mixed_writes() {
        for (rate, seed) in [
            (6_250_000, 1),
            (125_000_000, 2),
            (1_250_000, 3),
            (12_500_000, 4),
        ] {
            let mut bucket = TokenBucket::with_default_burst(rate);
            let piece = TokenBucket::recommended_piece(rate) as u64;
            let log = simulate(
                &mut bucket,
                rate * 30,
                |rng| match rng.below(4) {
                    0 => 1 + rng.below(64),     // tiny control frames
                    1 => 1200 + rng.below(200), // about a packet
                    _ => 1 + rng.below(piece),  // chunk pieces up to the recommended size
                },
                Duration::from_millis(2),
                seed,
            );
            assert_windows(&log, rate, 0.05, Duration::from_millis(100));
        }
    }

    #[test]
    fn long_run_average_is_exact_without_jitter() {
        let rate = 6_250_000;
        let mut bucket = TokenBucket::with_default_burst(rate);
        let log = simulate(&mut bucket, rate * 100, |_| 65_536, Duration::ZERO, 7);
        let end = log.last().unwrap().0;
        let total: u64 = log.iter().map(|(_, n)| n).sum();
        // Everything after the initial burst is paid for at exactly `rate`.
        let expected = (total - bucket.burst()) as f64 / rate as f64;
        let got = end.as_secs_f64();
        assert!(
            (got - expected).abs() < 0.01,
            "took {got}s, expected ~{expected}s"
        );
    }

    #[test]
    fn reserve_is_debt_based_and_exact() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100);
        assert_eq!(b.reserve(t0, 100), Duration::ZERO);
        assert_eq!(b.reserve(t0, 1), Duration::from_millis(1));
        // The second reservation queues behind the first.
        assert_eq!(b.reserve(t0, 499), Duration::from_millis(500));
        // Paying off the debt takes exactly that long.
        assert_eq!(
            b.reserve(t0 + Duration::from_millis(500), 0),
            Duration::ZERO
        );
        // Credit never exceeds the burst, however long we were idle.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 100);
    }

    #[test]
    fn delay_rounds_up_to_the_nanosecond() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 0);
        assert_eq!(b.reserve(t0, 1), Duration::from_nanos(333_333_334));
    }

    #[test]
    fn try_take_does_not_take_when_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100);
        assert_eq!(b.try_take(t0, 60), Ok(()));
        assert_eq!(b.try_take(t0, 60), Err(Duration::from_millis(20)));
        assert_eq!(
            b.try_take(t0 + Duration::from_millis(19), 60),
            Err(Duration::from_millis(1))
        );
        assert_eq!(b.try_take(t0 + Duration::from_millis(20), 60), Ok(()));
        // Larger than the burst: granted once full, then in debt.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.try_take(t1, 1000), Ok(()));
        assert_eq!(b.available(t1), 0);
        assert_eq!(b.reserve(t1, 0), Duration::from_millis(900));
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_default_burst(0);
        for _ in 0..1000 {
            assert_eq!(b.reserve(t0, u64::MAX / 2), Duration::ZERO);
        }
        assert_eq!(b.try_take(t0, u64::MAX), Ok(()));
        assert_eq!(TokenBucket::recommended_piece(0), 256 * 1024);
    }

    #[test]
    fn time_going_backwards_adds_no_credit() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1000, 100);
        assert_eq!(b.reserve(t0, 200), Duration::from_millis(100));
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(b.reserve(earlier, 0), Duration::from_millis(100));
    }

    #[test]
    fn set_rate_keeps_debt_in_bytes_and_applies_new_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 0);
        assert_eq!(b.reserve(t0, 1000), Duration::from_secs(1));
        // Half a second later 500 bytes of debt remain; at 100 B/s that is 5 s.
        let t1 = t0 + Duration::from_millis(500);
        b.set_rate(t1, 100, 0);
        assert_eq!(b.reserve(t1, 0), Duration::from_secs(5));
        // Unlimited forgives the debt; limiting again starts with a full burst.
        b.set_rate(t1, 0, 0);
        assert_eq!(b.reserve(t1, 10_000), Duration::ZERO);
        b.set_rate(t1, 1000, 50);
        assert_eq!(b.reserve(t1, 50), Duration::ZERO);
        assert_eq!(b.reserve(t1, 1), Duration::from_millis(1));
    }

    #[test]
    fn a_rate_change_never_carries_more_than_the_new_burst() {
        let t0 = Instant::now();
        let (high, low) = (125_000_000, 1_250_000);
        let mut b = TokenBucket::with_default_burst(high);
        // Idle at the high rate: a full high burst (2.5 MB) is saved up.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.available(t1), TokenBucket::default_burst(high));
        b.set_rate(t1, low, TokenBucket::default_burst(low));
        // At most the low burst (25 kB) may go at once after the change, then the low rate.
        assert_eq!(b.available(t1), TokenBucket::default_burst(low));
        assert_eq!(
            b.reserve(t1, TokenBucket::default_burst(low)),
            Duration::ZERO
        );
        assert_eq!(b.reserve(t1, low / 10), Duration::from_millis(100));
        // Idle again: the saved credit is capped at the new burst however long it waits.
        assert_eq!(
            b.available(t1 + Duration::from_secs(3600)),
            TokenBucket::default_burst(low)
        );
    }

    #[test]
    fn rate_change_mid_transfer_converges_within_5_percent() {
        let rate_a = 12_500_000;
        let rate_b = 2_500_000;
        let mut bucket = TokenBucket::with_default_burst(rate_a);
        let start = Instant::now();
        let mut rng = Rng(11);
        let mut now = start;
        let mut log = Vec::new();
        let switch = Duration::from_secs(10);
        let mut switched = false;
        while now - start < Duration::from_secs(30) {
            if !switched && now - start >= switch {
                bucket.set_rate(now, rate_b, TokenBucket::default_burst(rate_b));
                switched = true;
            }
            let piece = TokenBucket::recommended_piece(bucket.rate()) as u64;
            let n = 1 + rng.below(piece);
            let delay = bucket.reserve(now, n);
            if !delay.is_zero() {
                now += delay + Duration::from_nanos(rng.below(1_000_000));
            }
            log.push((now - start, n));
        }
        let after: Vec<_> = log
            .iter()
            .filter(|(t, _)| *t >= switch + Duration::from_secs(1))
            .map(|(t, n)| (*t - switch, *n))
            .collect();
        assert_windows(&after, rate_b, 0.05, Duration::from_millis(250));
    }

    #[test]
    fn default_burst_and_piece_are_small_fractions_of_a_second() {
        for rate in [125_000u64, 6_250_000, 125_000_000, 1_250_000_000] {
            let burst = TokenBucket::default_burst(rate);
            let piece = TokenBucket::recommended_piece(rate) as u64;
            assert!(burst >= MIN_BURST);
            if rate >= 50 * MIN_BURST {
                assert!(burst * 50 <= rate, "burst {burst} too large for {rate}");
            }
            assert!(piece * 50 <= rate, "piece {piece} too large for {rate}");
        }
    }
}
