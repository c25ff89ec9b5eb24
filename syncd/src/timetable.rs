//! A bandwidth timetable (`--bwlimit "08:00,50M 20:00,200M"`), sans-IO.
//!
//! The shape is rclone's: space-separated slots `HH:MM,RATE`, each in force from its time
//! until the next slot's, the last one wrapping around midnight to the first. A slot may
//! name a day (`Mon-08:00,50M`); then every slot must, and the table wraps around the week
//! instead of the day. `RATE` is a [`crate::rate`] value; `off` (rclone's word) and `0`
//! mean no limit in that slot. Times are local wall-clock time.
//!
//! This module reads no clock: [`Timetable::slot_at`] takes the local time as an argument
//! ([`LocalTime`]); the driver that reads the clock and applies the slot to the live
//! throttle is [`crate::bwlimit::follow`].
//!
//! ```
//! use syncd::timetable::{LocalTime, Timetable};
//! let t: Timetable = "08:00,50M 20:00,200M".parse().unwrap();
//! let at = |h, m| t.slot_at(LocalTime::new(0, h, m).unwrap()).rate.bytes_per_sec();
//! assert_eq!(at(9, 0), 6_250_000); // 50M from 08:00
//! assert_eq!(at(3, 0), 25_000_000); // 200M from 20:00 until 08:00 the next day
//! ```

use std::fmt;
use std::str::FromStr;

use crate::rate::{Rate, RateError};

const MINUTES_PER_DAY: u32 = 24 * 60;
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The accepted shape, for error messages.
pub const TIMETABLE_FORMS: &str = "a timetable is space-separated HH:MM,RATE slots in time \
order, e.g. \"08:00,50M 20:00,200M\", or Day-HH:MM,RATE in week order (Mon..Sun), e.g. \
\"Mon-08:00,50M Sat-00:00,off\"";

/// A local wall-clock time: the day of the week and the minute of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    /// 0 = Monday … 6 = Sunday.
    day: u8,
    /// 0 ..= 1439.
    minute: u16,
}

impl LocalTime {
    /// Monday 00:00.
    pub const MONDAY_MIDNIGHT: LocalTime = LocalTime { day: 0, minute: 0 };

    /// `day` 0 = Monday … 6 = Sunday, `hour` 0–23, `minute` 0–59; `None` out of range.
    pub fn new(day: u8, hour: u8, minute: u8) -> Option<LocalTime> {
        (day < 7 && hour < 24 && minute < 60).then(|| LocalTime {
            day,
            minute: u16::from(hour) * 60 + u16::from(minute),
        })
    }

    /// Minutes since Monday 00:00.
    fn of_week(self) -> u32 {
        u32::from(self.day) * MINUTES_PER_DAY + u32::from(self.minute)
    }
}

/// One slot of a [`Timetable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The slot as written, e.g. `08:00,50M`.
    pub text: String,
    /// The day it starts on (0 = Monday), for a weekly table.
    pub day: Option<u8>,
    /// Its start, in minutes after midnight.
    pub minute: u16,
    /// Its cap (unlimited for `off` or `0`).
    pub rate: Rate,
}

impl Slot {
    /// Where the slot starts in the table's cycle: minutes after midnight (daily) or after
    /// Monday 00:00 (weekly).
    fn key(&self) -> u32 {
        u32::from(self.day.unwrap_or(0)) * MINUTES_PER_DAY + u32::from(self.minute)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A parsed timetable: slots in strictly increasing start order, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timetable {
    slots: Vec<Slot>,
    weekly: bool,
}

/// Why a timetable could not be parsed. Every variant names the slot at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimetableError {
    /// No slot at all.
    #[error("invalid timetable \"{input}\": no slot; {TIMETABLE_FORMS}")]
    Empty {
        /// The text as given.
        input: String,
    },
    /// A slot that is not `[Day-]HH:MM,RATE`.
    #[error("invalid timetable slot \"{slot}\": expected [Day-]HH:MM,RATE; {TIMETABLE_FORMS}")]
    Shape {
        /// The slot as written.
        slot: String,
    },
    /// A day that is not Mon..Sun.
    #[error(
        "invalid timetable slot \"{slot}\": unknown day \"{day}\" (Mon, Tue, Wed, Thu, Fri, Sat or Sun)"
    )]
    Day {
        /// The slot as written.
        slot: String,
        /// The day as written.
        day: String,
    },
    /// A time that is not 00:00..23:59.
    #[error("invalid timetable slot \"{slot}\": bad time \"{time}\" (HH:MM from 00:00 to 23:59)")]
    Time {
        /// The slot as written.
        slot: String,
        /// The time as written.
        time: String,
    },
    /// The rate part is not a `RATE`.
    #[error("invalid timetable slot \"{slot}\": {source} (or off for no limit)")]
    Rate {
        /// The slot as written.
        slot: String,
        /// Why the rate was refused.
        source: RateError,
    },
    /// Some slots name a day and others do not.
    #[error(
        "invalid timetable slot \"{slot}\": either every slot names a day or none does; {TIMETABLE_FORMS}"
    )]
    MixedDays {
        /// The slot that breaks the pattern set by the first.
        slot: String,
    },
    /// A slot that starts before the one written before it.
    #[error(
        "invalid timetable slot \"{slot}\": starts before the slot before it, \"{previous}\" (write the slots in time order)"
    )]
    Unsorted {
        /// The slot out of order.
        slot: String,
        /// The slot written before it.
        previous: String,
    },
    /// A slot that starts when the one written before it does.
    #[error(
        "invalid timetable slot \"{slot}\": overlaps \"{previous}\", which starts at the same time"
    )]
    Overlap {
        /// The second slot.
        slot: String,
        /// The first.
        previous: String,
    },
}

impl FromStr for Timetable {
    type Err = TimetableError;

    fn from_str(input: &str) -> Result<Timetable, TimetableError> {
        let mut slots: Vec<Slot> = Vec::new();
        for text in input.split_whitespace() {
            let slot = parse_slot(text)?;
            if let Some(prev) = slots.last() {
                if prev.day.is_some() != slot.day.is_some() {
                    return Err(TimetableError::MixedDays { slot: slot.text });
                }
                match slot.key().cmp(&prev.key()) {
                    std::cmp::Ordering::Less => {
                        return Err(TimetableError::Unsorted {
                            slot: slot.text,
                            previous: prev.text.clone(),
                        });
                    }
                    std::cmp::Ordering::Equal => {
                        return Err(TimetableError::Overlap {
                            slot: slot.text,
                            previous: prev.text.clone(),
                        });
                    }
                    std::cmp::Ordering::Greater => {}
                }
            }
            slots.push(slot);
        }
        let weekly = match slots.first() {
            Some(s) => s.day.is_some(),
            None => {
                return Err(TimetableError::Empty {
                    input: input.to_string(),
                });
            }
        };
        Ok(Timetable { slots, weekly })
    }
}

fn parse_slot(text: &str) -> Result<Slot, TimetableError> {
    let shape = || TimetableError::Shape { slot: text.into() };
    let (when, rate) = text.split_once(',').ok_or_else(shape)?;
    let (day, time) = match when.split_once('-') {
        Some((d, t)) => {
            let day = DAYS
                .iter()
                .position(|name| name.eq_ignore_ascii_case(d))
                .ok_or_else(|| TimetableError::Day {
                    slot: text.into(),
                    day: d.into(),
                })?;
            (Some(u8::try_from(day).unwrap_or(0)), t)
        }
        None => (None, when),
    };
    let bad_time = || TimetableError::Time {
        slot: text.into(),
        time: time.into(),
    };
    let (h, m) = time.split_once(':').ok_or_else(bad_time)?;
    let digits = |s: &str, max: u16| {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
            .filter(|&v| v <= max)
    };
    let (Some(h), Some(m)) = (digits(h, 23), digits(m, 59).filter(|_| m.len() == 2)) else {
        return Err(bad_time());
    };
    let rate = if rate.eq_ignore_ascii_case("off") {
        Rate::UNLIMITED
    } else {
        rate.parse::<Rate>()
            .map_err(|source| TimetableError::Rate {
                slot: text.into(),
                source,
            })?
    };
    Ok(Slot {
        text: text.into(),
        day,
        minute: h * 60 + m,
        rate,
    })
}

impl Timetable {
    /// The slot in force at local time `now`: the last one that started at or before it,
    /// or, before the first slot of the day (week), the last one, which runs on from the
    /// day (week) before.
    pub fn slot_at(&self, now: LocalTime) -> &Slot {
        let t = if self.weekly {
            now.of_week()
        } else {
            u32::from(now.minute)
        };
        // `slots` is never empty (see `from_str`) and sorted by key.
        let i = self.slots.partition_point(|s| s.key() <= t);
        let i = if i == 0 { self.slots.len() } else { i };
        &self.slots[i - 1]
    }

    /// The slots, in order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(t: &Timetable, day: u8, h: u8, m: u8) -> &str {
        &t.slot_at(LocalTime::new(day, h, m).unwrap()).text
    }

    #[test]
    fn daily_slots_wrap_around_midnight() {
        let t: Timetable = "08:00,50M 12:30,off 20:00,200M".parse().unwrap();
        assert_eq!(at(&t, 0, 0, 0), "20:00,200M");
        assert_eq!(at(&t, 3, 7, 59), "20:00,200M");
        assert_eq!(at(&t, 3, 8, 0), "08:00,50M");
        assert_eq!(at(&t, 6, 12, 29), "08:00,50M");
        assert_eq!(at(&t, 6, 12, 30), "12:30,off");
        assert!(
            t.slot_at(LocalTime::new(6, 13, 0).unwrap())
                .rate
                .is_unlimited()
        );
        assert_eq!(at(&t, 1, 23, 59), "20:00,200M");
        assert_eq!(
            t.slot_at(LocalTime::new(1, 21, 0).unwrap()).rate,
            Rate::from_bytes_per_sec(25_000_000)
        );
    }

    #[test]
    fn one_slot_holds_all_day() {
        let t: Timetable = "10:00,10M".parse().unwrap();
        for (d, h, m) in [(0, 0, 0), (2, 10, 0), (6, 23, 59)] {
            assert_eq!(at(&t, d, h, m), "10:00,10M");
        }
    }

    #[test]
    fn weekly_slots_wrap_around_the_week() {
        let t: Timetable = "Mon-08:00,50M Fri-18:00,off sun-22:00,10M".parse().unwrap();
        assert_eq!(at(&t, 0, 7, 0), "sun-22:00,10M");
        assert_eq!(at(&t, 0, 8, 0), "Mon-08:00,50M");
        assert_eq!(at(&t, 3, 3, 0), "Mon-08:00,50M");
        assert_eq!(at(&t, 4, 18, 0), "Fri-18:00,off");
        assert_eq!(at(&t, 5, 12, 0), "Fri-18:00,off");
        assert_eq!(at(&t, 6, 22, 0), "sun-22:00,10M");
        assert_eq!(t.slots()[2].day, Some(6));
    }

    #[test]
    fn errors_name_the_slot() {
        let cases: &[(&str, &str)] = &[
            ("", "no slot"),
            ("   ", "no slot"),
            ("08:00", "slot \"08:00\": expected [Day-]HH:MM,RATE"),
            (
                "08:00,50M 24:00,1M",
                "slot \"24:00,1M\": bad time \"24:00\"",
            ),
            ("8:60,1M", "slot \"8:60,1M\": bad time"),
            ("08:5,1M", "bad time \"08:5\""),
            ("ab:cd,1M", "bad time"),
            ("+8:00,1M", "bad time"),
            ("0800,1M", "bad time"),
            (
                "20:00,50M 08:00,200M",
                "slot \"08:00,200M\": starts before the slot before it, \"20:00,50M\"",
            ),
            (
                "08:00,50M 08:00,200M",
                "slot \"08:00,200M\": overlaps \"08:00,50M\"",
            ),
            (
                "Tue-08:00,50M Mon-09:00,1M",
                "slot \"Mon-09:00,1M\": starts before",
            ),
            (
                "Mon-08:00,50M 09:00,1M",
                "slot \"09:00,1M\": either every slot names a day",
            ),
            ("Mun-08:00,50M", "unknown day \"Mun\""),
            (
                "08:00,50X",
                "slot \"08:00,50X\": invalid rate \"50X\": unknown unit",
            ),
            ("08:00,-5M", "cannot be negative"),
            ("08:00,1e99", "exponents"),
        ];
        for (input, needle) in cases {
            let msg = input.parse::<Timetable>().expect_err(input).to_string();
            assert!(msg.contains(needle), "{input:?}: {msg:?} lacks {needle:?}");
        }
    }

    proptest! {
        /// Whatever the table and the time, the slot in force started at or before `now`
        /// with no other slot starting in between, or `now` is before every slot and the
        /// last one runs on.
        #[test]
        fn slot_at_is_the_latest_start_not_after_now(
            mut starts in proptest::collection::btree_set(0u16..1440, 1..8),
            day in 0u8..7, minute in 0u16..1440,
        ) {
            let text = starts.iter().map(|m| format!("{:02}:{:02},{}M", m / 60, m % 60, m + 1)).collect::<Vec<_>>().join(" ");
            let t: Timetable = text.parse().unwrap();
            let now = LocalTime::new(day, (minute / 60) as u8, (minute % 60) as u8).unwrap();
            let got = t.slot_at(now).minute;
            let starts: Vec<u16> = std::mem::take(&mut starts).into_iter().collect();
            let expect = starts.iter().rev().find(|&&s| s <= minute).or(starts.last()).copied().unwrap();
            prop_assert_eq!(got, expect);
        }
    }
}
