//! `--bwlimit RATE|auto[:MAX]|"HH:MM,RATE HH:MM,RATE"`: what the option means, and the
//! driver that keeps a timetable's slot applied to the live throttle.
//!
//! [`BwLimit`] is the parsed option (sans-IO). A fixed `RATE` is a token bucket
//! ([`crate::limit`]); a timetable ([`crate::timetable`]) is the same bucket with its rate
//! changed at each slot boundary by [`follow`], through [`Throttle::set_rate`], the path
//! `set-bwlimit` takes; `auto` swaps the connection's congestion controller for the
//! delay-based scavenger ([`crate::ledbat`]), with `MAX` (if given) as a fixed cap on top.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::control::Shared;
use crate::rate::{Rate, RateError};
use crate::timetable::{LocalTime, Slot, Timetable, TimetableError};
use crate::transport::Throttle;

/// Help text for `--bwlimit`.
pub const BWLIMIT_HELP: &str = "Bandwidth cap on wire bytes. RATE is bits per second by \
default, the way network people write it: 50M = 50 Mbit/s, 100k = 100 kbit/s, 1G = 1 Gbit/s; \
bytes per second with an uppercase B: 6MB = 6,000,000 bytes/s, 6MiB = 6×1024×1024 bytes/s. A \
unit is required; 0 means no limit (rsync's --bwlimit=0). A timetable changes the cap at local \
times, e.g. --bwlimit \"08:00,50M 20:00,200M\" (50 Mbit/s from 08:00, 200 Mbit/s from 20:00 \
until 08:00), optionally per day: \"Mon-08:00,50M Sat-00:00,off\" (off = no limit). auto \
(network pushes only) takes only the bandwidth nobody else uses: a delay-based scavenger \
congestion controller (LEDBAT) that backs off when other traffic builds a queue; auto:MAX also \
caps it at MAX, e.g. auto:200M.";

/// A parsed `--bwlimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BwLimit {
    /// A fixed cap (unlimited for `0`).
    Fixed(Rate),
    /// A cap that follows a timetable.
    Timetable(Timetable),
    /// The scavenger congestion controller, optionally under a fixed cap.
    Auto {
        /// `auto:MAX`'s cap.
        max: Option<Rate>,
    },
}

/// Why a `--bwlimit` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BwLimitError {
    /// A `RATE` that does not parse.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// A timetable that does not parse.
    #[error(transparent)]
    Timetable(#[from] TimetableError),
    /// `auto:MAX` with a bad (or zero) `MAX`.
    #[error(
        "invalid --bwlimit \"{input}\": auto:MAX needs a non-zero RATE as MAX, e.g. auto:200M ({reason})"
    )]
    AutoMax {
        /// The text as given.
        input: String,
        /// What was wrong with `MAX`.
        reason: String,
    },
    /// `auto` asked of a push to a local directory.
    #[error(
        "--bwlimit auto applies to network pushes (DEST as HOST:PORT): it yields to other traffic on the link, and a local push has no link; use a RATE to cap it"
    )]
    AutoLocal,
}

impl FromStr for BwLimit {
    type Err = BwLimitError;

    fn from_str(input: &str) -> Result<BwLimit, BwLimitError> {
        let s = input.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BwLimit::Auto { max: None });
        }
        if let Some(max) = s.strip_prefix("auto:") {
            let reason = |reason: String| BwLimitError::AutoMax {
                input: input.into(),
                reason,
            };
            return match max.parse::<Rate>() {
                Ok(r) if r.is_unlimited() => Err(reason("0 is no cap; write plain auto".into())),
                Ok(r) => Ok(BwLimit::Auto { max: Some(r) }),
                Err(e) => Err(reason(e.to_string())),
            };
        }
        if s.contains(',') {
            return Ok(BwLimit::Timetable(s.parse()?));
        }
        Ok(BwLimit::Fixed(s.parse()?))
    }
}

impl BwLimit {
    /// The fixed cap in force at local time `now`, in bytes per second (`None` =
    /// unlimited); for `auto`, its `MAX`.
    pub fn rate_at(&self, now: LocalTime) -> Option<u64> {
        let rate = match self {
            BwLimit::Fixed(r) => *r,
            BwLimit::Timetable(t) => t.slot_at(now).rate,
            BwLimit::Auto { max } => max.unwrap_or(Rate::UNLIMITED),
        };
        Some(rate.bytes_per_sec()).filter(|&r| r > 0)
    }

    /// Whether the scavenger congestion controller is asked for.
    pub fn is_auto(&self) -> bool {
        matches!(self, BwLimit::Auto { .. })
    }

    /// Refuses `auto` for a push whose DEST is a local directory (`remote == false`).
    pub fn check_dest(&self, remote: bool) -> Result<(), BwLimitError> {
        if self.is_auto() && !remote {
            return Err(BwLimitError::AutoLocal);
        }
        Ok(())
    }
}

/// The local wall-clock time now (the system time zone: `TZ`, else `/etc/localtime`).
pub fn local_now() -> LocalTime {
    let z = jiff::Zoned::now();
    let day = u8::try_from(z.weekday().to_monday_zero_offset()).unwrap_or(0);
    let hour = u8::try_from(z.hour()).unwrap_or(0);
    let minute = u8::try_from(z.minute()).unwrap_or(0);
    // jiff's fields are always in range; midnight Monday is a harmless fallback.
    LocalTime::new(day, hour, minute).unwrap_or(LocalTime::MONDAY_MIDNIGHT)
}

/// Applies `table`'s slot at `now` to `throttle` if it differs from `current` (the slot
/// applied last), and records it in `shared`'s status. Returns the slot now in force.
fn apply<'a>(
    table: &'a Timetable,
    now: LocalTime,
    current: Option<&Slot>,
    throttle: &Throttle,
    shared: Option<&Shared>,
) -> &'a Slot {
    let slot = table.slot_at(now);
    if current != Some(slot) {
        throttle.set_rate(slot.rate.bytes_per_sec());
        if let Some(shared) = shared {
            shared.update(|s| s.bwlimit_slot = Some(slot.text.clone()));
        }
        tracing::info!(slot = %slot, rate = %slot.rate, "bwlimit timetable: slot in force");
    }
    slot
}

/// Keeps `table`'s current slot applied to `throttle`: applies it at once, then looks at
/// the local clock every second and applies a new slot as soon as it starts. A
/// `set-bwlimit` in between holds until the next slot starts. Runs until dropped.
pub async fn follow(table: Timetable, throttle: Throttle, shared: Option<Arc<Shared>>) {
    let mut current = apply(&table, local_now(), None, &throttle, shared.as_deref()).clone();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let slot = apply(
            &table,
            local_now(),
            Some(&current),
            &throttle,
            shared.as_deref(),
        );
        if *slot != current {
            current = slot.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let p = |s: &str| s.parse::<BwLimit>();
        assert_eq!(
            p("50M"),
            Ok(BwLimit::Fixed(Rate::from_bytes_per_sec(6_250_000)))
        );
        assert_eq!(p("0"), Ok(BwLimit::Fixed(Rate::UNLIMITED)));
        assert_eq!(p("auto"), Ok(BwLimit::Auto { max: None }));
        assert_eq!(p("AUTO"), Ok(BwLimit::Auto { max: None }));
        assert_eq!(
            p("auto:200M"),
            Ok(BwLimit::Auto {
                max: Some(Rate::from_bytes_per_sec(25_000_000))
            })
        );
        assert!(matches!(
            p("08:00,50M 20:00,200M"),
            Ok(BwLimit::Timetable(_))
        ));
        for (bad, needle) in [
            ("auto:0", "0 is no cap"),
            ("auto:", "auto:MAX needs a non-zero RATE"),
            ("auto:fast", "invalid rate \"fast\""),
            ("lots", "invalid rate \"lots\""),
            ("20:00,1M 08:00,2M", "starts before"),
        ] {
            let msg = p(bad).expect_err(bad).to_string();
            assert!(msg.contains(needle), "{bad:?}: {msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn rate_at_follows_the_table_and_auto_max() {
        let t: BwLimit = "08:00,50M 20:00,off".parse().unwrap();
        let at = |h| LocalTime::new(2, h, 0).unwrap();
        assert_eq!(t.rate_at(at(9)), Some(6_250_000));
        assert_eq!(t.rate_at(at(21)), None);
        assert_eq!("auto".parse::<BwLimit>().unwrap().rate_at(at(9)), None);
        assert_eq!(
            "auto:8M".parse::<BwLimit>().unwrap().rate_at(at(9)),
            Some(1_000_000)
        );
    }

    #[test]
    fn auto_is_refused_on_a_local_push() {
        let auto: BwLimit = "auto".parse().unwrap();
        assert_eq!(auto.check_dest(false), Err(BwLimitError::AutoLocal));
        assert_eq!(auto.check_dest(true), Ok(()));
        assert_eq!("50M".parse::<BwLimit>().unwrap().check_dest(false), Ok(()));
    }

    #[tokio::test]
    async fn apply_changes_the_throttle_only_at_a_slot_boundary() {
        let table: Timetable = "08:00,8M 20:00,16M".parse().unwrap();
        let throttle = Throttle::new(0);
        let shared = Shared::new("push", throttle.clone());
        let at = |h, m| LocalTime::new(1, h, m).unwrap();
        let first = apply(&table, at(19, 59), None, &throttle, Some(&shared)).clone();
        assert_eq!(throttle.rate(), 1_000_000);
        assert_eq!(shared.status().bwlimit_slot.as_deref(), Some("08:00,8M"));
        // A set-bwlimit in the same slot holds...
        throttle.set_rate(3_000);
        let same = apply(&table, at(19, 59), Some(&first), &throttle, Some(&shared));
        assert_eq!(*same, first);
        assert_eq!(throttle.rate(), 3_000);
        // ...until the next slot starts.
        apply(&table, at(20, 0), Some(&first), &throttle, Some(&shared));
        assert_eq!(throttle.rate(), 2_000_000);
        assert_eq!(shared.status().bwlimit_slot.as_deref(), Some("20:00,16M"));
    }
}
