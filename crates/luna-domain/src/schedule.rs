//! When a schedule fires: CipherTrust's scheduler's `run_at`, a five-field
//! cron expression (minute, hour, day of the month, month, day of the week;
//! `*`, `a`, `a-b`, `*/n`, `a-b/n` and lists, month and day names in any
//! case), read in UTC. As cron does, a day is taken when either day field
//! matches if both are restricted, and when both match otherwise.

pub mod job_config;

use time::{Date, Duration, OffsetDateTime, Time};

pub use job_config::{Firing, LastRun, RunOutcome, Schedule, ScheduleRequest, SynchronizationParams};

use crate::error::{DomainError, Result};

/// A checked `run_at` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether the day of the month, and the day of the week, were restricted (not `*`).
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// The longest `run_at` read: a cron expression is a few dozen characters.
const MAX_RUN_AT_CHARS: usize = 100;

/// How far ahead a firing is looked for: past it, an expression that names
/// no date that exists (`0 0 30 2 *`) is refused as never firing.
const LOOK_AHEAD_DAYS: i64 = 366 * 8;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's rules: its name in sentences, its range, its names.
struct Field {
    name: &'static str,
    low: u32,
    high: u32,
    names: &'static [&'static str],
    /// The first name's value (`jan` is 1, `sun` is 0).
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        low: 0,
        high: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        low: 0,
        high: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of the month",
        low: 1,
        high: 31,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "month",
        low: 1,
        high: 12,
        names: &MONTHS,
        names_from: 1,
    },
    // 7 is Sunday too, as in cron.
    Field {
        name: "day of the week",
        low: 0,
        high: 7,
        names: &WEEKDAYS,
        names_from: 0,
    },
];

impl CronSchedule {
    /// Checks `run_at`; a refusal names the field and what it allows.
    pub fn parse(text: &str) -> Result<CronSchedule> {
        if text.chars().count() > MAX_RUN_AT_CHARS {
            return Err(DomainError::invalid(format!(
                "run_at is longer than {MAX_RUN_AT_CHARS} characters"
            )));
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(DomainError::invalid(format!(
                "run_at {text:?} must have five fields: minute hour day-of-month month day-of-week (for instance \"0 2 * * sat\")"
            )));
        }
        let mut sets = [0u64; 5];
        for ((set, field), rule) in sets.iter_mut().zip(&fields).zip(&FIELDS) {
            *set = parse_field(field, rule)?;
        }
        // Sunday is 0 and 7.
        let weekdays = (sets[4] | (sets[4] >> 7)) & 0x7f;
        let schedule = CronSchedule {
            text: fields.join(" "),
            minutes: sets[0],
            hours: u32::try_from(sets[1]).unwrap_or(u32::MAX),
            days: u32::try_from(sets[2]).unwrap_or(u32::MAX),
            months: u16::try_from(sets[3]).unwrap_or(u16::MAX),
            weekdays: u8::try_from(weekdays).unwrap_or(u8::MAX),
            // As cron reads it: a field that begins with `*` (`*/2` too) is not a restriction.
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
        };
        let epoch = OffsetDateTime::UNIX_EPOCH;
        if schedule.next_after(epoch).is_none() {
            return Err(DomainError::invalid(format!(
                "run_at {text:?} names no date that exists: it would never run"
            )));
        }
        Ok(schedule)
    }

    /// The expression, its fields separated by one space.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn takes_day(&self, date: Date) -> bool {
        if self.months & (1 << u8::from(date.month())) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().number_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }

    /// The first firing strictly after `after` (to the minute, in UTC), if
    /// any within the look-ahead.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = after.checked_to_offset(time::UtcOffset::UTC)?;
        let from = after
            .replace_second(0)
            .ok()?
            .replace_nanosecond(0)
            .ok()?
            .checked_add(Duration::minutes(1))?;
        let mut date = from.date();
        for day in 0..LOOK_AHEAD_DAYS {
            if self.takes_day(date) {
                let earliest = if day == 0 { from.time() } else { Time::MIDNIGHT };
                for hour in earliest.hour()..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    let first_minute = if hour == earliest.hour() {
                        earliest.minute()
                    } else {
                        0
                    };
                    if let Some(minute) = (first_minute..60).find(|m| self.minutes & (1 << m) != 0) {
                        let time = Time::from_hms(hour, minute, 0).ok()?;
                        return Some(date.with_time(time).assume_utc());
                    }
                }
            }
            date = date.next_day()?;
        }
        None
    }
}

/// The years a `start_date` or `end_date` may fall in: every firing and
/// its arithmetic then stays within what `time` holds.
const YEARS: std::ops::RangeInclusive<i32> = 1970..=9998;

/// When a schedule may fire: its `run_at`, within `start_date` and
/// `end_date` (either may be open), unless `disabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timetable {
    /// When it fires.
    pub run_at: CronSchedule,
    /// No firing before this.
    pub start: Option<OffsetDateTime>,
    /// No firing after this.
    pub end: Option<OffsetDateTime>,
    /// A disabled schedule never fires, and shows no next firing.
    pub disabled: bool,
}

impl Timetable {
    /// Checks a timetable as it arrives: `run_at`, and dates in RFC 3339
    /// with the end after the start.
    pub fn parse(run_at: &str, start: Option<&str>, end: Option<&str>, disabled: bool) -> Result<Timetable> {
        let date = |field: &str, text: Option<&str>| {
            text.map(|text| {
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .and_then(|at| at.checked_to_offset(time::UtcOffset::UTC))
                    .ok_or_else(|| {
                        DomainError::invalid(format!(
                            "{field} {text:?} is not an RFC 3339 date and time (for instance \"2027-01-31T02:00:00Z\")"
                        ))
                    })
                    .and_then(|at| {
                        if YEARS.contains(&at.year()) {
                            Ok(at)
                        } else {
                            Err(DomainError::invalid(format!(
                                "{field} must fall in the years {} to {}",
                                YEARS.start(),
                                YEARS.end()
                            )))
                        }
                    })
            })
            .transpose()
        };
        let (start, end) = (date("start_date", start)?, date("end_date", end)?);
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                return Err(DomainError::invalid("end_date must be after start_date"));
            }
        }
        let timetable = Timetable {
            run_at: CronSchedule::parse(run_at)?,
            start,
            end,
            disabled,
        };
        // One that can never fire is refused, as an expression naming no
        // date is: an operator would wait for it in vain.
        let from = start.unwrap_or(OffsetDateTime::UNIX_EPOCH) - Duration::minutes(1);
        if !disabled
            && (Timetable {
                disabled: false,
                ..timetable.clone()
            })
            .next_after(from)
            .is_none()
        {
            return Err(DomainError::invalid(format!(
                "run_at {run_at:?} names no minute between start_date and end_date: it would never run"
            )));
        }
        Ok(timetable)
    }

    /// The next firing after `now`, if the timetable has one.
    pub fn next_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if self.disabled {
            return None;
        }
        // The first firing is the first minute at or after the start: the
        // start's own minute only if the start is on the minute.
        let from = match self.start {
            Some(start) if start > now => {
                let on_the_minute = start.second() == 0 && start.nanosecond() == 0;
                if on_the_minute {
                    start.checked_sub(Duration::minutes(1))?
                } else {
                    start
                }
            }
            _ => now,
        };
        self.run_at
            .next_after(from)
            .filter(|at| self.start.is_none_or(|start| *at >= start))
            .filter(|at| self.end.is_none_or(|end| *at <= end))
            .filter(|at| YEARS.contains(&at.year()))
    }

    /// The firing to run now, if one fell due after `since` (the last
    /// firing run, or when the schedule was made) and by `now`. Firings
    /// missed while no instance ran give one run, the latest.
    pub fn due(&self, since: OffsetDateTime, now: OffsetDateTime) -> Option<OffsetDateTime> {
        // Nothing fires after the end: the windows below count back from it.
        let now = self.end.map_or(now, |end| now.min(end));
        // The latest firing in (since, now] is the latest in the shortest
        // window back from `now` that holds one: a walk over a few firings,
        // not over every minute of a long downtime.
        [
            Duration::hours(1),
            Duration::days(1),
            Duration::days(32),
            Duration::days(367),
        ]
        .into_iter()
        .map(|window| now.checked_sub(window).map_or(since, |from| from.max(since)))
        .chain([since])
        .find_map(|from| self.latest_between(from, now))
    }

    /// The latest firing after `from` and by `now`, walking firing by firing.
    fn latest_between(&self, from: OffsetDateTime, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut latest = None;
        let mut at = from;
        // Each firing is strictly after the one before: the walk ends.
        while let Some(next) = self.next_after(at).filter(|next| *next > at && *next <= now) {
            latest = Some(next);
            at = next;
        }
        latest
    }
}

/// One field's values as a bit set; a refusal names the field.
fn parse_field(text: &str, rule: &Field) -> Result<u64> {
    let refuse = |what: &str| {
        let names = match rule.names.first().zip(rule.names.last()) {
            Some((first, last)) => format!(" or names {first}–{last}"),
            None => String::new(),
        };
        DomainError::invalid(format!(
            "run_at's {} field {text:?} {what}: it takes *, numbers {}–{}{names}, ranges a-b, steps /n and lists",
            rule.name, rule.low, rule.high
        ))
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| refuse("has a step that is no whole number above 0"))?,
            ),
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (rule.low, rule.high)
        } else {
            match range.split_once('-') {
                Some((a, b)) => (
                    value(a, rule).ok_or_else(|| refuse("is not understood"))?,
                    value(b, rule).ok_or_else(|| refuse("is not understood"))?,
                ),
                None => {
                    let v = value(range, rule).ok_or_else(|| refuse("is not understood"))?;
                    // `a/n` runs from a to the end of the range, as cron reads it.
                    (v, if part.contains('/') { rule.high } else { v })
                }
            }
        };
        if low > high {
            return Err(refuse("has a range that runs backwards"));
        }
        // A step past the range (`1/4294967295`) ends the walk, not the process.
        let mut v = Some(low);
        while let Some(at) = v.filter(|at| *at <= high) {
            set |= 1 << at;
            v = at.checked_add(step);
        }
    }
    Ok(set)
}

/// A number within the field's range, or one of its names (any case).
fn value(text: &str, rule: &Field) -> Option<u32> {
    let lower = text.to_ascii_lowercase();
    let named = rule
        .names
        .iter()
        .position(|n| *n == lower)
        .and_then(|at| u32::try_from(at).ok())
        .map(|at| at + rule.names_from);
    let number = || {
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse().ok())
            .flatten()
    };
    named
        .or_else(number)
        .filter(|v| (rule.low..=rule.high).contains(v))
}

#[cfg(test)]
mod tests;
