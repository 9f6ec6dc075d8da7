//! `CronSchedule`: what it accepts and refuses, and when it fires.

use time::{Month, UtcOffset};

use super::*;

/// An instant in UTC, to the second.
fn at(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> OffsetDateTime {
    let month = Month::try_from(month).unwrap();
    Date::from_calendar_date(year, month, day)
        .unwrap()
        .with_hms(hour, minute, second)
        .unwrap()
        .assume_utc()
}

fn next(expr: &str, after: OffsetDateTime) -> OffsetDateTime {
    CronSchedule::parse(expr).unwrap().next_after(after).unwrap()
}

#[test]
fn it_fires_at_the_next_minute_its_fields_allow_in_utc() {
    // 2026-12-04 is a Friday.
    let friday = at(2026, 12, 4, 10, 30, 45);
    assert_eq!(next("0 2 * * sat", friday), at(2026, 12, 5, 2, 0, 0));
    assert_eq!(
        next("0 2 * * SAT", friday),
        at(2026, 12, 5, 2, 0, 0),
        "names in any case"
    );
    assert_eq!(next("*/15 * * * *", friday), at(2026, 12, 4, 10, 45, 0));
    assert_eq!(
        next("* * * * *", at(2026, 12, 4, 10, 30, 0)),
        at(2026, 12, 4, 10, 31, 0),
        "strictly after"
    );
    assert_eq!(next("0 0 1 jan *", friday), at(2027, 1, 1, 0, 0, 0));
    assert_eq!(next("30 9-17/4 * * mon-fri", friday), at(2026, 12, 4, 13, 30, 0));
    assert_eq!(next("0 0 * * 7", friday), at(2026, 12, 6, 0, 0, 0), "7 is Sunday");
    assert_eq!(
        next("0 0 29 2 *", friday),
        at(2028, 2, 29, 0, 0, 0),
        "the next leap day"
    );
    // Both day fields restricted: either day is taken, as cron does.
    assert_eq!(next("0 12 15 * mon", friday), at(2026, 12, 7, 12, 0, 0));
    // An instant given in another offset is read in UTC.
    let in_paris = at(2026, 12, 4, 22, 30, 0).to_offset(UtcOffset::from_hms(1, 0, 0).unwrap());
    assert_eq!(next("0 * * * *", in_paris), at(2026, 12, 4, 23, 0, 0));
    assert_eq!(next("0 * * * *", in_paris).offset(), UtcOffset::UTC);
    assert_eq!(
        CronSchedule::parse("  0   2 * *  sat ").unwrap().as_str(),
        "0 2 * * sat"
    );
}

#[test]
fn expressions_that_cannot_be_run_are_refused_naming_the_field() {
    for (expr, said) in [
        ("0 2 * *", "must have five fields"),
        ("60 * * * *", "minute field \"60\""),
        ("* 24 * * *", "hour field \"24\""),
        ("* * 0 * *", "day of the month field \"0\""),
        ("* * * 13 *", "month field \"13\""),
        ("* * * * funday", "day of the week field \"funday\""),
        ("*/0 * * * *", "step that is no whole number above 0"),
        ("5-1 * * * *", "runs backwards"),
        ("0 0 30 feb *", "would never run"),
    ] {
        let refused = CronSchedule::parse(expr).unwrap_err().to_string();
        assert!(refused.contains(said), "{expr:?}: {refused}");
    }
}
