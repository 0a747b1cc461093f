//! Reset-schedule arithmetic (docs/admin-api.md §2, §4): every reset happens at 00:00 UTC.
//!
//! * monthly: the 1st of each calendar month;
//! * weekly: Monday for policies (DOC-BP); Sunday for workspace inline limits (DOC-WS). The
//!   sources disagree (docs/admin-api.md); we follow each surface's own page;
//! * every N days: counted from the UTC midnight of the day the schedule was (re)set.

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::portkey::PeriodicReset;

/// A reset schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Cumulative: never resets.
    Never,
    Calendar(PeriodicReset),
    EveryDays(i64),
}

impl Schedule {
    pub fn from_fields(periodic_reset: Option<PeriodicReset>, days: Option<i64>) -> Self {
        match (periodic_reset, days) {
            (Some(p), _) => Schedule::Calendar(p),
            (None, Some(d)) => Schedule::EveryDays(d),
            (None, None) => Schedule::Never,
        }
    }
}

fn utc_date(t: Timestamp) -> Date {
    t.to_zoned(TimeZone::UTC).date()
}

fn midnight(d: Date) -> Timestamp {
    d.to_zoned(TimeZone::UTC)
        .expect("UTC midnight always exists")
        .timestamp()
}

/// `t` moved back to 00:00 UTC of its day.
pub fn floor_to_midnight(t: Timestamp) -> Timestamp {
    midnight(utc_date(t))
}

/// The first reset strictly after `now` for a schedule set at `now`.
pub fn next_reset(schedule: Schedule, now: Timestamp, weekly_start: Weekday) -> Option<Timestamp> {
    let today = utc_date(now);
    match schedule {
        Schedule::Never => None,
        Schedule::Calendar(PeriodicReset::Monthly) => {
            let next_month = today.first_of_month().checked_add(1.month()).ok()?;
            Some(midnight(next_month))
        }
        Schedule::Calendar(PeriodicReset::Weekly) => {
            // Strictly after today: a schedule set on the reset day waits a full week.
            let days_ahead = (weekly_start.to_monday_zero_offset() as i64
                - today.weekday().to_monday_zero_offset() as i64)
                .rem_euclid(7);
            let days_ahead = if days_ahead == 0 { 7 } else { days_ahead };
            Some(midnight(today.checked_add(days_ahead.days()).ok()?))
        }
        Schedule::EveryDays(n) => Some(midnight(today.checked_add(n.days()).ok()?)),
    }
}

/// Moves a due reset forward: the first reset after `now` following `due` (≤ now).
pub fn advance(
    schedule: Schedule,
    due: Timestamp,
    now: Timestamp,
    weekly_start: Weekday,
) -> Option<Timestamp> {
    match schedule {
        Schedule::Never => None,
        Schedule::EveryDays(n) if n > 0 => {
            let mut next = due;
            while next <= now {
                next = midnight(utc_date(next).checked_add(n.days()).ok()?);
            }
            Some(next)
        }
        Schedule::EveryDays(_) => None,
        Schedule::Calendar(_) => next_reset(schedule, now, weekly_start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn monthly_is_first_of_next_month() {
        let n = next_reset(
            Schedule::Calendar(PeriodicReset::Monthly),
            ts("2026-11-21T14:00:00Z"),
            Weekday::Monday,
        );
        assert_eq!(n, Some(ts("2026-12-01T00:00:00Z")));
        let n = next_reset(
            Schedule::Calendar(PeriodicReset::Monthly),
            ts("2026-12-31T23:59:59Z"),
            Weekday::Monday,
        );
        assert_eq!(n, Some(ts("2027-01-01T00:00:00Z")));
    }

    #[test]
    fn weekly_is_next_start_day() {
        // 2026-11-21 is a Saturday.
        let sat = ts("2026-11-21T14:00:00Z");
        let weekly = Schedule::Calendar(PeriodicReset::Weekly);
        assert_eq!(
            next_reset(weekly, sat, Weekday::Monday),
            Some(ts("2026-11-23T00:00:00Z"))
        );
        assert_eq!(
            next_reset(weekly, sat, Weekday::Sunday),
            Some(ts("2026-11-22T00:00:00Z"))
        );
        let monday = ts("2026-11-23T00:00:00Z");
        assert_eq!(
            next_reset(weekly, monday, Weekday::Monday),
            Some(ts("2026-11-30T00:00:00Z"))
        );
    }

    #[test]
    fn every_n_days_counts_from_midnight_and_rolls() {
        let now = ts("2026-11-21T14:00:00Z");
        let first = next_reset(Schedule::EveryDays(10), now, Weekday::Monday).unwrap();
        assert_eq!(first, ts("2026-12-01T00:00:00Z"));
        let later = ts("2026-12-15T08:00:00Z");
        assert_eq!(
            advance(Schedule::EveryDays(10), first, later, Weekday::Monday),
            Some(ts("2026-12-21T00:00:00Z"))
        );
        assert_eq!(floor_to_midnight(now), ts("2026-11-21T00:00:00Z"));
    }
}
