//! Adaptive compression: pick a zstd level (or none) from the measured link rate and the
//! measured compression speed, in the spirit of `zstd --adapt`. Sans-IO: the driver reports
//! what it measured; nothing here reads a clock.
//!
//! Compression pays only when the link, not the CPU, is the bottleneck, and only if the
//! compressor outruns the link by a margin: on loopback or a fast LAN, zstd on two cores is
//! slower than sending raw bytes. So:
//! - a link not yet measured counts as the bottleneck, and is compressed at the cheapest
//!   level: the first chunks go into the transport's send window at disk speed, long before
//!   any measurement, and on a slow link a window's worth sent raw costs seconds (on
//!   100 Mbit/s, 37 of 126 MB went raw: 103 MB on the wire against 90 MB at a fixed level
//!   3); the first window of measurement that shows no bottleneck turns it off;
//! - a window counts as link-bound only if it carried near the peak rate ([`NEAR_PEAK`]),
//!   and then if the senders mostly wait on the link, if the transport's round trip shows
//!   a queue building at a bottleneck ([`QUEUE_RTT_FACTOR`]), or if the machine's CPUs are
//!   mostly idle ([`CPU_IDLE`]: then the transfer is paced by the link or its latency, and
//!   compressing costs cycles nobody else wants); otherwise send raw;
//! - while the link is the bottleneck, use the highest level whose measured speed on one
//!   CPU, times the CPUs, is at least [`SPEED_MARGIN`] times the link rate, whatever the
//!   content: zstd stores a block it cannot shrink raw (3 bytes of overhead) and quickly,
//!   and trees mix compressible and incompressible files (a `.gz` man page, then a
//!   copyright text). A policy that turned compression off while the recent ratio was
//!   below 1.02 sent 47 of 126 MB of `/usr/share/doc`+`man` raw on 100 Mbit/s, and missed
//!   the text between the archives;
//! - every [`PROBE_EVERY`]th chunk is compressed at the next level up (level 1 when off) to
//!   keep the speed estimates current.
//!
//! A compressed chunk is the next part of its data stream's zstd stream
//! ([`super::stream`]), so it is sent as compressed even when it did not shrink.

/// Levels considered, cheapest first.
pub const LEVELS: [i32; 3] = [1, 3, 6];
/// Compression must be this many times faster than the link: its speed on one CPU times
/// the machine's CPUs (the senders compress in parallel), against the link rate.
pub const SPEED_MARGIN: f64 = 2.0;
/// Weight that earlier observations keep at each new one (about the last 30 count).
pub const DECAY: f64 = 0.97;
/// One chunk in this many is compressed at the next level up (at level 1 when off), to
/// keep that level's estimates current. At 16, these probes were a tenth of a loopback
/// push's time (5.6 s against 5.1 s with compression off); at 64 they cost ~3%.
pub const PROBE_EVERY: u64 = 64;
/// Senders waiting on the link more than this fraction of the time means link-bound.
pub const LINK_BOUND: f64 = 0.5;
/// Machine CPUs idle more than this fraction of the time also means link-bound. The CPU
/// our own compression took counts as idle: it would be, were we not compressing (without
/// that, compressing made the machine look busy, which turned compression off, which made
/// it look idle again).
pub const CPU_IDLE: f64 = 0.5;
/// A smoothed round trip this many times the least one seen, and at least [`QUEUE_DELAY`]
/// above it, means a queue is building at the bottleneck: the link is what limits us.
/// (The senders' writes block only once the transport's 32 MiB send window is full, seconds
/// after a slow link filled up.)
pub const QUEUE_RTT_FACTOR: f64 = 2.0;
/// See [`QUEUE_RTT_FACTOR`], in seconds.
pub const QUEUE_DELAY: f64 = 0.005;
/// Windows in a row that must say "not link-bound" before compression is turned off.
pub const HOLD_WINDOWS: u32 = 4;
/// A window is link-bound only if it carried at least this share of the most the link was
/// seen to carry ([`PEAK_DECAY`]). A window that carried much less is held back by
/// something else, most often CPU: on an uncapped veth the receiver, starved of CPU, acks
/// late, the round trip grows as if a queue were building, and compressing then made the
/// push 10% slower.
pub const NEAR_PEAK: f64 = 0.7;
/// Weight the peak rate keeps at each window (it halves in about 35 windows, 9 s), so that
/// a link that became slower is believed after a while.
pub const PEAK_DECAY: f64 = 0.98;

/// Running estimates and the current choice.
#[derive(Debug, Clone)]
pub struct Adapt {
    fixed: Option<i32>,
    /// Per level, decaying sums of raw bytes compressed and CPU seconds it took: the speed
    /// is their quotient, a throughput (a mean of per-chunk speeds is dominated by the
    /// fixed cost of small chunks, and swung 10x from chunk to chunk).
    raw_secs: [(f64, f64); LEVELS.len()],
    /// Wire bytes per second while link-bound; `None` until a window measured it.
    link_rate: Option<f64>,
    link_bound: bool,
    chunks: u64,
    level: i32,
    /// CPUs of the machine, to turn compression seconds into a share of it.
    cpus: f64,
    /// Seconds spent compressing since the last link window.
    compress_secs: f64,
    /// Link windows in a row that were not link-bound.
    unbound_windows: u32,
    /// The transport's latest smoothed round-trip time and the least seen, in seconds.
    rtt: Option<f64>,
    min_rtt: f64,
    /// The most wire bytes per second a window carried, decaying ([`PEAK_DECAY`]).
    peak_rate: f64,
}

impl Adapt {
    /// Adaptive. `known_link_rate` (bytes/s), e.g. from `--bwlimit`, seeds the link
    /// estimate; with `None` the link is assumed to be the bottleneck until measured
    /// otherwise, and chunks are compressed at the cheapest level meanwhile.
    pub fn new(known_link_rate: Option<u64>) -> Adapt {
        let mut a = Adapt {
            fixed: None,
            raw_secs: [(0.0, 0.0); LEVELS.len()],
            link_rate: known_link_rate.map(|r| r as f64),
            link_bound: true,
            chunks: 0,
            level: 0,
            cpus: 1.0,
            compress_secs: 0.0,
            unbound_windows: 0,
            rtt: None,
            min_rtt: f64::INFINITY,
            peak_rate: 0.0,
        };
        a.decide();
        a
    }

    /// The machine has `cpus` CPUs (default 1), for [`Adapt::observe_link`]'s idle share.
    pub fn with_cpus(mut self, cpus: usize) -> Adapt {
        self.cpus = cpus.max(1) as f64;
        self
    }

    /// Always this level (`0` = never compress), as with `--compress-level`.
    pub fn fixed(level: i32) -> Adapt {
        let mut a = Adapt::new(None);
        a.fixed = Some(level);
        a.level = level;
        a
    }

    /// The level to compress the next chunk at (`0` = send raw). Counts chunks to schedule
    /// probes.
    pub fn next_level(&mut self) -> i32 {
        self.chunks += 1;
        if let Some(l) = self.fixed {
            return l;
        }
        if self.chunks % PROBE_EVERY == 0 {
            // Keep the estimate of the next level up current, so that a level measured
            // slow once (on a busy moment, or on content that is slow to compress) gets
            // another chance.
            let next = LEVELS
                .iter()
                .position(|&l| l == self.level)
                .map_or(0, |i| i + 1);
            if let Some(&l) = LEVELS.get(next) {
                return l;
            }
        }
        self.level
    }

    /// Records one compression: `raw` bytes took `secs` of CPU at `level`.
    pub fn observe_compress(&mut self, level: i32, raw: usize, secs: f64) {
        let Some(i) = LEVELS.iter().position(|&l| l == level) else {
            return;
        };
        if raw == 0 {
            return;
        }
        self.compress_secs += secs.max(0.0);
        let (r, t) = &mut self.raw_secs[i];
        *r = DECAY * *r + raw as f64;
        *t = DECAY * *t + secs.max(0.0);
        self.decide();
    }

    /// Records one window of sending: `wire_bytes` went out in `secs` of wall time, during
    /// which the senders together spent `wait_secs` blocked on the link or the throttle,
    /// out of `senders × secs` available, and the machine's CPUs were idle `cpu_idle` of the
    /// time (0..=1, if known). Compression turns off only after [`HOLD_WINDOWS`] windows in a
    /// row that are not link-bound.
    pub fn observe_link(
        &mut self,
        wire_bytes: u64,
        secs: f64,
        wait_secs: f64,
        senders: usize,
        cpu_idle: Option<f64>,
    ) {
        if secs <= 0.0 || senders == 0 || wire_bytes == 0 {
            return;
        }
        let busy = wait_secs / (secs * senders as f64);
        let own = self.compress_secs / (secs * self.cpus);
        self.compress_secs = 0.0;
        let queueing = self
            .rtt
            .is_some_and(|r| r > QUEUE_RTT_FACTOR * self.min_rtt && r - self.min_rtt > QUEUE_DELAY);
        let rate = wire_bytes as f64 / secs;
        self.peak_rate = rate.max(PEAK_DECAY * self.peak_rate);
        let near_peak = rate >= NEAR_PEAK * self.peak_rate;
        let bound = near_peak
            && (busy > LINK_BOUND || queueing || cpu_idle.is_some_and(|i| i + own > CPU_IDLE));
        if bound {
            self.link_bound = true;
            self.unbound_windows = 0;
            self.link_rate = Some(rate);
        } else {
            self.unbound_windows += 1;
            // The assumption that an unmeasured link is slow ends at the first window that
            // shows no bottleneck; a measured one must hold for HOLD_WINDOWS.
            if self.unbound_windows >= HOLD_WINDOWS || self.link_rate.is_none() {
                self.link_bound = false;
            }
        }
        self.decide();
    }

    /// Records the transport's smoothed round-trip time, in seconds. A round trip well
    /// above the least one seen means packets queue at a bottleneck: the link is full.
    pub fn observe_rtt(&mut self, rtt: f64) {
        if rtt > 0.0 {
            self.rtt = Some(rtt);
            self.min_rtt = self.min_rtt.min(rtt);
        }
    }

    /// Bytes per CPU second at `LEVELS[i]`; 0 until measured.
    fn speed(&self, i: usize) -> f64 {
        let (raw, secs) = self.raw_secs[i];
        raw / secs.max(1e-9)
    }

    /// Bytes per second at `LEVELS[i]` on all CPUs (the senders compress in parallel). One
    /// CPU's speed alone undersold small files: on `/usr/share/doc`, chunks of 1-2 kB
    /// compress at ~20 MB/s per call, under twice a 100 Mbit/s link, and the policy sent
    /// raw while both CPUs were half idle.
    fn capacity(&self, i: usize) -> f64 {
        self.speed(i) * self.cpus
    }

    fn decide(&mut self) {
        if self.fixed.is_some() {
            return;
        }
        let mut level = 0;
        match (self.link_bound, self.link_rate) {
            (false, _) => {}
            // Not measured yet: the cheapest level.
            (true, None) => level = LEVELS[0],
            (true, Some(rate)) => {
                for (i, &l) in LEVELS.iter().enumerate() {
                    let measured = self.speed(i) > 0.0;
                    let fast = self.capacity(i) >= SPEED_MARGIN * rate;
                    if measured && fast {
                        level = l;
                    } else if !measured && i == 0 {
                        // Nothing measured yet: try the cheapest.
                        level = l;
                        break;
                    } else if !measured && level == LEVELS[i - 1] {
                        // Unmeasured but the cheaper level is comfortably fast: try it.
                        if self.capacity(i - 1) >= 4.0 * SPEED_MARGIN * rate {
                            level = l;
                        }
                        break;
                    } else if measured {
                        break;
                    }
                }
            }
        }
        self.level = level;
    }

    /// The current choice, for reports.
    pub fn level(&self) -> i32 {
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_link_stays_raw_even_if_compressible() {
        let mut a = off();
        // Loopback: senders never wait; zstd-1 at 400 MB/s.
        for _ in 0..100 {
            a.observe_link(500_000_000, 1.0, 0.05, 4, Some(0.05));
            a.observe_compress(1, 1 << 16, (1 << 16) as f64 / 400e6);
        }
        assert_eq!(a.level(), 0);
    }

    #[test]
    fn slow_link_compresses_and_climbs_while_cpu_allows() {
        let mut a = Adapt::new(Some(12_500_000)); // 100 Mbit/s
        // Level 1 probes: 400 MB/s.
        a.observe_compress(1, 1 << 16, (1 << 16) as f64 / 400e6);
        assert_eq!(
            a.level(),
            3,
            "level 1 is 32x the link: level 3 is worth trying"
        );
        a.observe_compress(3, 1 << 16, (1 << 16) as f64 / 150e6);
        a.observe_link(12_500_000, 1.0, 3.8, 4, None);
        assert_eq!(a.level(), 6);
        a.observe_compress(6, 1 << 16, (1 << 16) as f64 / 20e6);
        assert_eq!(a.level(), 3, "level 6 at 20 MB/s is under 2x the link");
    }

    #[test]
    fn idle_cpus_on_a_slow_link_turn_compression_on() {
        // Senders never block (little data in flight), but the machine is idle: the
        // transfer is paced by the link, so compressing is free and saves bytes.
        let mut a = Adapt::new(None);
        a.observe_compress(1, 1 << 16, (1 << 16) as f64 / 400e6);
        a.observe_link(12_000_000, 1.0, 0.01, 4, Some(0.9));
        assert!(a.level() >= 1);
        // The same with busy CPUs (loopback): raw, once that held for HOLD_WINDOWS.
        let mut b = Adapt::new(None);
        b.observe_compress(1, 1 << 16, (1 << 16) as f64 / 400e6);
        for _ in 0..HOLD_WINDOWS {
            b.observe_link(120_000_000, 1.0, 0.01, 4, Some(0.1));
        }
        assert_eq!(b.level(), 0);
    }

    #[test]
    fn compressing_does_not_talk_itself_out_of_compressing() {
        // 100 Mbit/s on 2 CPUs: idle 0.8 while sending raw. While compressing (level 1 at
        // 100 MB/s, 3.75 MB a window of 0.25 s: 0.075 of the machine) idle is 0.45.
        let mut a = Adapt::new(None).with_cpus(2);
        a.observe_compress(1, 1 << 16, (1 << 16) as f64 / 400e6);
        a.observe_link(3_000_000, 0.25, 0.0, 4, Some(0.8));
        assert!(a.level() >= 1);
        for _ in 0..20 {
            for _ in 0..60 {
                a.observe_compress(1, 1 << 16, (1 << 16) as f64 / 100e6);
            }
            a.observe_link(3_000_000, 0.25, 0.0, 4, Some(0.45));
            assert!(
                a.level() >= 1,
                "stays on: part of the busy CPU is our compression"
            );
        }
        // Really busy (someone else's load): off, but only after HOLD_WINDOWS windows.
        for i in 1..=HOLD_WINDOWS {
            a.observe_link(3_000_000, 0.25, 0.0, 4, Some(0.05));
            assert_eq!(a.level() == 0, i == HOLD_WINDOWS, "window {i}");
        }
    }

    #[test]
    fn a_growing_round_trip_means_the_link_is_full() {
        // 100 Mbit/s, senders never block (the send window holds seconds of data), CPUs
        // busy with the transfer itself: only the queue at the bottleneck says link-bound.
        let mut a = Adapt::new(None).with_cpus(2);
        a.observe_compress(1, 1 << 20, (1 << 20) as f64 / 300e6);
        a.observe_rtt(0.0015);
        for _ in 0..HOLD_WINDOWS {
            a.observe_link(3_000_000, 0.25, 0.0, 4, Some(0.2));
        }
        assert_eq!(a.level(), 0, "no queue yet");
        a.observe_rtt(0.010);
        a.observe_link(3_000_000, 0.25, 0.0, 4, Some(0.2));
        assert!(a.level() >= 1, "a 10 ms queue on a 1.5 ms path");
        // Loopback jitter: 0.1 ms to 0.9 ms is not a queue worth compressing for.
        let mut b = Adapt::new(None).with_cpus(2);
        b.observe_compress(1, 1 << 20, (1 << 20) as f64 / 300e6);
        b.observe_rtt(0.0001);
        b.observe_rtt(0.0009);
        for _ in 0..HOLD_WINDOWS {
            b.observe_link(120_000_000, 0.25, 0.0, 4, Some(0.1));
        }
        assert_eq!(b.level(), 0);
    }

    #[test]
    fn speed_is_a_throughput_and_slow_levels_are_probed_again() {
        let mut a = Adapt::new(Some(12_500_000));
        // Many small chunks at a fixed cost each, one big chunk: the speed is bytes over
        // seconds in all, not the mean of the chunks' speeds.
        for _ in 0..9 {
            a.observe_compress(1, 1000, 100e-6);
        }
        a.observe_compress(1, 1 << 20, 1e-3);
        assert!(a.speed(0) > 500e6, "{}", a.speed(0));
        // Level 3 measured slow once: not used, but probed again one chunk in PROBE_EVERY.
        a.observe_compress(3, 1 << 16, 1.0);
        assert_eq!(a.level(), 1);
        let probes = (0..PROBE_EVERY * 4).filter(|_| a.next_level() == 3).count();
        assert_eq!(probes, 4);
    }

    #[test]
    fn a_slow_window_on_a_link_seen_fast_is_not_link_bound() {
        // Uncapped veth on one 2-CPU machine: 200 MB/s, then a window at 50 MB/s in which
        // the starved receiver's late acks look like a queue.
        let mut a = Adapt::new(None).with_cpus(2);
        a.observe_compress(1, 1 << 20, (1 << 20) as f64 / 400e6);
        a.observe_rtt(0.0002);
        a.observe_link(50_000_000, 0.25, 0.0, 4, Some(0.1));
        assert_eq!(a.level(), 0, "fast and CPU-bound");
        a.observe_rtt(0.025);
        a.observe_link(12_500_000, 0.25, 0.0, 4, Some(0.1));
        assert_eq!(
            a.level(),
            0,
            "a quarter of the peak is not the link's limit"
        );
        // A link that really is slow carries about the same every window: compressed.
        let mut b = Adapt::new(None).with_cpus(2);
        b.observe_compress(1, 1 << 20, (1 << 20) as f64 / 400e6);
        b.observe_rtt(0.0002);
        for rate in [3_000_000, 3_100_000, 2_900_000, 3_050_000] {
            b.observe_rtt(0.025);
            b.observe_link(rate, 0.25, 0.0, 4, Some(0.1));
            assert!(b.level() > 0, "{rate}");
        }
    }

    #[test]
    fn small_chunks_count_the_cpus_that_compress_them() {
        // 100 Mbit/s (11.6 MB/s measured, queue building), small files at 20 MB/s per CPU.
        let level_on = |cpus| {
            let mut a = Adapt::new(None).with_cpus(cpus);
            for _ in 0..50 {
                a.observe_compress(1, 1500, 1500.0 / 20e6);
            }
            a.observe_rtt(0.0004);
            a.observe_rtt(0.011);
            a.observe_link(2_900_000, 0.25, 0.0, 4, Some(0.5));
            a.level()
        };
        assert_eq!(level_on(2), 1);
        // One CPU at that speed would not keep twice ahead of the link.
        assert_eq!(level_on(1), 0);
    }

    /// A policy that measured a fast link for HOLD_WINDOWS windows: off.
    fn off() -> Adapt {
        let mut a = Adapt::new(None);
        for _ in 0..HOLD_WINDOWS {
            a.observe_link(500_000_000, 1.0, 0.05, 4, Some(0.05));
        }
        assert_eq!(a.level(), 0);
        a
    }

    #[test]
    fn an_unmeasured_link_is_compressed_at_the_cheapest_level_until_it_proves_fast() {
        // A slow link's send window fills at disk speed before the first measurement:
        // those chunks must not all go raw.
        let mut a = Adapt::new(None);
        assert_eq!(a.next_level(), LEVELS[0]);
        // The first window that shows no bottleneck ends the assumption...
        a.observe_link(500_000_000, 0.25, 0.05, 4, Some(0.05));
        assert_eq!(a.level(), 0);
        // ...whereas a link measured slow once needs HOLD_WINDOWS of them.
        let mut b = Adapt::new(None);
        b.observe_compress(1, 1 << 16, (1 << 16) as f64 / 400e6);
        b.observe_link(3_000_000, 0.25, 0.9, 4, Some(0.8));
        assert!(b.level() > 0);
        for i in 1..=HOLD_WINDOWS {
            b.observe_link(500_000_000, 0.25, 0.05, 4, Some(0.05));
            assert_eq!(b.level() == 0, i == HOLD_WINDOWS, "window {i}");
        }
        // A known link rate (--bwlimit) starts at the cheapest level too.
        assert_eq!(Adapt::new(Some(12_500_000)).level(), LEVELS[0]);
    }

    #[test]
    fn probes_while_off_and_fixed_overrides() {
        let mut a = off();
        let probes = (0..64).filter(|_| a.next_level() > 0).count();
        assert_eq!(probes as u64, 64 / PROBE_EVERY);
        let mut f = Adapt::fixed(0);
        assert!((0..64).all(|_| f.next_level() == 0));
        let mut f = Adapt::fixed(9);
        assert_eq!(f.next_level(), 9);
    }
}
