//! The scavenger congestion controller behind `--bwlimit auto`: LEDBAT (RFC 6817), with
//! the multiplicative decrease of LEDBAT++ so that it backs off within a few round trips.
//!
//! [`Ledbat`] is the sans-IO core: it is fed delay samples and acknowledged bytes with
//! `now` passed in, and answers with a congestion window. It never reads a clock.
//! [`LedbatConfig`] is the [`quinn::congestion::ControllerFactory`] that puts it in a QUIC
//! connection ([`LedbatController`] adapts quinn's callbacks).
//!
//! **The model.** Each acknowledged packet gives a round-trip sample `now − sent`. The
//! *base delay* is the smallest sample of the last [`BASE_HISTORY`] minutes (kept as one
//! minimum per minute, so a route change is forgotten after ten minutes); the *current
//! delay* is the smallest of the last [`CURRENT_FILTER`] samples (which filters out ACK
//! delay and scheduling noise). Their difference is the queueing delay our own and others'
//! traffic builds at the bottleneck. Against the target `T`:
//! - below `T`, the window grows by `GAIN × (T − q)/T` MSS per round trip (RFC 6817), and
//!   before the first time the queue reaches `T/2` (or a loss) it grows as in slow start,
//!   by the acknowledged bytes, so an idle link is filled in a few round trips;
//! - above `T`, it shrinks by `min(q/T − 1, 1/2)` of itself per round trip (LEDBAT++),
//!   so a queue built by foreground traffic makes it yield within a few round trips;
//! - on loss it halves, at most once per round trip; on persistent congestion it drops to
//!   the minimum;
//! - it never falls below [`MIN_WINDOW_PACKETS`] packets (2 MSS), and is never zero.
//!
//! Round-trip samples include the reverse path and the peer's ACK delay, unlike RFC
//! 6817's one-way delays; a standing queue on the reverse path therefore also makes it
//! yield, which is what a scavenger should do anyway.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory};

/// Default target queueing delay (see `ARCHITECTURE.md` for the measurement behind it).
pub const DEFAULT_TARGET: Duration = Duration::from_millis(25);
/// Minutes of per-minute base-delay minima kept (RFC 6817's BASE_HISTORY).
pub const BASE_HISTORY: usize = 10;
/// Samples whose minimum is the current delay (RFC 6817's CURRENT_FILTER).
pub const CURRENT_FILTER: usize = 4;
/// The window never falls below this many packets.
pub const MIN_WINDOW_PACKETS: u64 = 2;
/// RFC 6817's GAIN for the increase: one MSS per round trip at zero queueing delay.
const GAIN: f64 = 1.0;

/// The sans-IO LEDBAT window.
#[derive(Debug, Clone)]
pub struct Ledbat {
    target: Duration,
    mss: u64,
    window: f64,
    /// Growing by the acknowledged bytes, until the queue first reaches `target/2`.
    slow_start: bool,
    /// When the minute buckets of `base` count from (the first sample).
    epoch: Option<Instant>,
    /// (minute since `epoch`, smallest sample in it), oldest first.
    base: VecDeque<(u64, Duration)>,
    /// The last samples, newest last.
    current: VecDeque<Duration>,
    /// Losses of packets sent before this time belong to an event already reacted to.
    recovery_start: Option<Instant>,
}

impl Ledbat {
    /// A window of `initial_window` bytes over packets of `mss` bytes, aiming at `target`
    /// queueing delay.
    pub fn new(target: Duration, mss: u64, initial_window: u64) -> Ledbat {
        let mss = mss.max(1);
        Ledbat {
            target: target.max(Duration::from_millis(1)),
            mss,
            window: initial_window.max(MIN_WINDOW_PACKETS * mss) as f64,
            slow_start: true,
            epoch: None,
            base: VecDeque::new(),
            current: VecDeque::new(),
            recovery_start: None,
        }
    }

    /// The congestion window in bytes: at least [`MIN_WINDOW_PACKETS`] packets.
    pub fn window(&self) -> u64 {
        (self.window as u64).max(self.min_window())
    }

    /// The queueing delay estimate (current − base), `None` before the first sample.
    pub fn queueing_delay(&self) -> Option<Duration> {
        let base = self.base.iter().map(|(_, d)| *d).min()?;
        let current = self.current.iter().min()?;
        Some(current.saturating_sub(base))
    }

    /// The smallest delay sample of the base history.
    pub fn base_delay(&self) -> Option<Duration> {
        self.base.iter().map(|(_, d)| *d).min()
    }

    /// A new packet size (path MTU change).
    pub fn set_mss(&mut self, mss: u64) {
        self.mss = mss.max(1);
        self.window = self.window.max(self.min_window() as f64);
    }

    /// `bytes` were acknowledged at `now`, with round-trip sample `rtt`. `app_limited`:
    /// the sender had nothing more to send, so the window was not the limit, and it does
    /// not grow (it still shrinks on a queue).
    pub fn on_ack(&mut self, now: Instant, rtt: Duration, bytes: u64, app_limited: bool) {
        self.sample(now, rtt);
        let Some(q) = self.queueing_delay() else {
            return;
        };
        let target = self.target.as_secs_f64();
        let q = q.as_secs_f64();
        let acked = bytes as f64;
        if q > target {
            // LEDBAT++: shrink by min(q/T - 1, 1/2) of the window per window acknowledged.
            self.slow_start = false;
            let fraction = (q / target - 1.0).min(0.5);
            self.window -= fraction * acked;
        } else if !app_limited {
            if self.slow_start && q < target / 2.0 {
                self.window += acked;
            } else {
                self.slow_start = false;
                let off_target = (target - q) / target;
                self.window += GAIN * off_target * acked * self.mss as f64 / self.window;
            }
        }
        self.window = self.window.max(self.min_window() as f64);
    }

    /// A loss (or ECN mark) of a packet sent at `sent`, detected at `now`; persistent
    /// congestion drops the window to its minimum.
    pub fn on_loss(&mut self, now: Instant, sent: Instant, persistent: bool) {
        self.slow_start = false;
        if persistent {
            self.window = self.min_window() as f64;
            self.recovery_start = Some(now);
            return;
        }
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.window = (self.window / 2.0).max(self.min_window() as f64);
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mss
    }

    fn sample(&mut self, now: Instant, rtt: Duration) {
        let epoch = *self.epoch.get_or_insert(now);
        let minute = now.saturating_duration_since(epoch).as_secs() / 60;
        match self.base.back_mut() {
            Some((m, d)) if *m == minute => *d = (*d).min(rtt),
            _ => {
                self.base.push_back((minute, rtt));
                while self
                    .base
                    .front()
                    .is_some_and(|(m, _)| *m + (BASE_HISTORY as u64) <= minute)
                {
                    self.base.pop_front();
                }
            }
        }
        self.current.push_back(rtt);
        if self.current.len() > CURRENT_FILTER {
            self.current.pop_front();
        }
    }
}

/// The [`ControllerFactory`] for `--bwlimit auto`: a [`Ledbat`] per connection.
#[derive(Debug, Clone)]
pub struct LedbatConfig {
    /// The target queueing delay.
    pub target: Duration,
    /// The initial window in bytes (raised to 2 packets).
    pub initial_window: u64,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        LedbatConfig {
            target: DEFAULT_TARGET,
            // quinn's (and RFC 9002's) default: 10 packets of 1200 bytes, at most 14,720.
            initial_window: 12_000,
        }
    }
}

impl ControllerFactory for LedbatConfig {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LedbatController {
            core: Ledbat::new(self.target, u64::from(current_mtu), self.initial_window),
            initial_window: self.initial_window,
        })
    }
}

/// quinn's callbacks onto a [`Ledbat`].
#[derive(Debug, Clone)]
pub struct LedbatController {
    core: Ledbat,
    initial_window: u64,
}

impl LedbatController {
    /// The window state (what `quinn::Connection::congestion_state` shows of it).
    pub fn core(&self) -> &Ledbat {
        &self.core
    }
}

impl Controller for LedbatController {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &quinn_proto::RttEstimator,
    ) {
        self.core
            .on_ack(now, now.saturating_duration_since(sent), bytes, app_limited);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        self.core.on_loss(now, sent, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.core.set_mss(u64::from(new_mtu));
    }

    fn window(&self) -> u64 {
        self.core.window()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u64 = 1200;
    const MS: Duration = Duration::from_millis(1);

    /// Acknowledges one window's worth of packets over one round trip of `rtt`, each
    /// with that sample; returns the time after it.
    fn round(l: &mut Ledbat, now: Instant, rtt: Duration) -> Instant {
        let packets = (l.window() / MSS).max(1);
        let step = rtt / u32::try_from(packets).unwrap_or(u32::MAX);
        let mut t = now;
        for _ in 0..packets {
            t += step;
            l.on_ack(t, rtt, MSS, false);
        }
        now + rtt
    }

    #[test]
    fn grows_on_an_idle_path() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 10 * MSS);
        let mut now = Instant::now();
        let mut last = l.window();
        for _ in 0..20 {
            now = round(&mut l, now, 10 * MS);
            assert!(
                l.window() >= last,
                "shrank on an idle path: {} < {last}",
                l.window()
            );
            last = l.window();
        }
        assert!(
            l.window() > 1000 * MSS,
            "only {} after 20 idle rounds",
            l.window()
        );
    }

    #[test]
    fn grows_linearly_after_slow_start() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 100 * MSS);
        let mut now = Instant::now();
        now = round(&mut l, now, 10 * MS);
        // A queue of half the target ends slow start; then ~half an MSS per round.
        for _ in 0..5 {
            now = round(&mut l, now, 10 * MS + DEFAULT_TARGET / 2 + MS);
        }
        let before = l.window();
        for _ in 0..10 {
            now = round(&mut l, now, 10 * MS + DEFAULT_TARGET / 2);
        }
        let grown = l.window() - before;
        assert!(
            (4 * MSS..=6 * MSS).contains(&grown),
            "grew {grown} bytes in 10 rounds at half the target, expected ~5 MSS"
        );
    }

    #[test]
    fn shrinks_within_a_few_rounds_when_the_queue_exceeds_the_target() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 10 * MSS);
        let mut now = Instant::now();
        for _ in 0..10 {
            now = round(&mut l, now, 10 * MS);
        }
        let full = l.window();
        // Foreground traffic builds a 75 ms queue: 3x the target.
        for _ in 0..4 {
            now = round(&mut l, now, 10 * MS + 3 * DEFAULT_TARGET);
        }
        assert!(
            l.window() * 10 < full,
            "after 4 rounds at 3x the target: {} of {full}",
            l.window()
        );
        // Just above the target it shrinks, slowly.
        let w = l.window();
        round(&mut l, now, 10 * MS + DEFAULT_TARGET + 2 * MS);
        assert!(l.window() < w || l.window() == MIN_WINDOW_PACKETS * MSS);
    }

    #[test]
    fn never_collapses_below_two_packets() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 0);
        assert_eq!(l.window(), 2 * MSS);
        let t0 = Instant::now();
        l.on_ack(t0, 10 * MS, MSS, false);
        for i in 1..10_000u32 {
            let now = t0 + MS * i;
            l.on_ack(now, Duration::from_secs(5), 1_000_000, false);
            if i % 7 == 0 {
                l.on_loss(now, now, i % 21 == 0);
            }
            assert!(l.window() >= 2 * MSS, "window {} at step {i}", l.window());
        }
        l.set_mss(1452);
        assert_eq!(l.window(), 2 * 1452);
    }

    #[test]
    fn halves_on_loss_once_per_event() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 100 * MSS);
        let t0 = Instant::now();
        l.on_ack(t0, 10 * MS, MSS, false);
        let w = l.window();
        let t1 = t0 + 20 * MS;
        l.on_loss(t1, t0, false);
        assert_eq!(l.window(), w / 2);
        // Another packet of the same flight: the same event.
        l.on_loss(t1 + MS, t0 + MS, false);
        assert_eq!(l.window(), w / 2);
        // A packet sent after the reaction: a new event.
        l.on_loss(t1 + 30 * MS, t1 + 5 * MS, false);
        assert_eq!(l.window(), w / 4);
        l.on_loss(t1 + 60 * MS, t1 + 50 * MS, true);
        assert_eq!(l.window(), 2 * MSS);
    }

    #[test]
    fn app_limited_acks_do_not_grow_the_window() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 10 * MSS);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.on_ack(t0 + MS * i, 10 * MS, MSS, true);
        }
        assert_eq!(l.window(), 10 * MSS);
    }

    #[test]
    fn base_delay_forgets_a_route_after_ten_minutes() {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 10 * MSS);
        let t0 = Instant::now();
        l.on_ack(t0, 5 * MS, MSS, true);
        // The path now takes 40 ms: a queue of 35 ms, until the old minimum ages out.
        for s in 1..=11 * 60u64 {
            l.on_ack(t0 + Duration::from_secs(s), 40 * MS, MSS, true);
        }
        assert_eq!(l.base_delay(), Some(40 * MS));
        assert_eq!(l.queueing_delay(), Some(Duration::ZERO));
    }

    /// A fluid model of a bottleneck of `rate` bytes/s and `base` round trip, shared from
    /// the middle round on with a foreground flow that keeps `fg_queue` bytes standing in
    /// its queue. Returns (throughput share of the link, average queueing delay) over the
    /// last quarter.
    fn bottleneck(rate: f64, base: Duration, fg_queue: f64, rounds: usize) -> (f64, Duration) {
        let mut l = Ledbat::new(DEFAULT_TARGET, MSS, 10 * MSS);
        let bdp = rate * base.as_secs_f64();
        let mut now = Instant::now();
        let (mut share, mut delay) = (0.0, 0.0);
        for i in 0..rounds {
            let w = l.window() as f64;
            let fg = if i >= rounds / 2 { fg_queue } else { 0.0 };
            let queue = (w - bdp).max(0.0) + fg;
            let rtt = base + Duration::from_secs_f64(queue / rate);
            now = round(&mut l, now, rtt);
            if i >= rounds * 3 / 4 {
                share += (w / rtt.as_secs_f64() / rate).min(1.0);
                delay += queue / rate;
            }
        }
        let n = (rounds - rounds * 3 / 4) as f64;
        (share / n, Duration::from_secs_f64(delay / n))
    }

    #[test]
    fn fills_an_idle_bottleneck_and_holds_the_queue_near_the_target() {
        // 100 Mbit/s, 10 ms.
        let (share, delay) = bottleneck(12.5e6, 10 * MS, 0.0, 400);
        assert!(share >= 0.9, "used {share:.2} of an idle link");
        assert!(delay <= DEFAULT_TARGET + 5 * MS, "queue {delay:?}");
    }

    #[test]
    fn yields_to_a_foreground_queue_above_the_target() {
        // Then the foreground keeps 40 ms queued: LEDBAT backs off to its minimum.
        let (share, _) = bottleneck(12.5e6, 10 * MS, 12.5e6 * 0.040, 400);
        assert!(
            share < 0.01,
            "kept {share:.3} of the link under a 40 ms foreground queue"
        );
    }
}
