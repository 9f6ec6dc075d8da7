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

#[test]
fn a_timetable_fires_within_its_dates_once_for_every_firing_missed_and_never_when_disabled() {
    let table = Timetable::parse(
        "0 2 * * *",
        Some("2026-12-10T00:00:00Z"),
        Some("2026-12-12T02:00:00Z"),
        false,
    )
    .unwrap();
    let friday = at(2026, 12, 4, 10, 0, 0);
    assert_eq!(
        table.next_after(friday),
        Some(at(2026, 12, 10, 2, 0, 0)),
        "not before the start"
    );
    assert_eq!(
        table.next_after(at(2026, 12, 11, 3, 0, 0)),
        Some(at(2026, 12, 12, 2, 0, 0)),
        "the end's own minute"
    );
    assert_eq!(
        table.next_after(at(2026, 12, 12, 2, 0, 0)),
        None,
        "nothing after the end"
    );
    // Three firings missed while no instance ran: one run, the latest.
    assert_eq!(
        table.due(friday, at(2026, 12, 12, 9, 0, 0)),
        Some(at(2026, 12, 12, 2, 0, 0))
    );
    assert_eq!(
        table.due(at(2026, 12, 12, 2, 0, 0), at(2026, 12, 12, 9, 0, 0)),
        None,
        "already run"
    );
    assert_eq!(table.due(friday, at(2026, 12, 10, 1, 59, 59)), None, "not yet");
    let disabled = Timetable {
        disabled: true,
        ..table
    };
    assert_eq!(
        (
            disabled.next_after(friday),
            disabled.due(friday, at(2027, 1, 1, 0, 0, 0))
        ),
        (None, None)
    );
}

/// A start within a minute: the first firing is the next minute the
/// expression names, never the start's own minute before it (once, that
/// minute was named again and again, and `due` walked forever).
#[test]
fn a_start_off_the_minute_is_never_fired_before_and_the_walk_of_missed_firings_ends() {
    let start = "2026-12-10T10:30:45.5Z";
    let table = Timetable::parse("*/5 * * * *", Some(start), None, false).unwrap();
    let before = at(2026, 12, 4, 10, 0, 0);
    assert_eq!(table.next_after(before), Some(at(2026, 12, 10, 10, 35, 0)));
    let on_the_minute = Timetable::parse("*/5 * * * *", Some("2026-12-10T10:30:00Z"), None, false).unwrap();
    assert_eq!(
        on_the_minute.next_after(before),
        Some(at(2026, 12, 10, 10, 30, 0)),
        "the start's own minute"
    );
    assert_eq!(
        table.due(before, at(2026, 12, 10, 10, 52, 0)),
        Some(at(2026, 12, 10, 10, 50, 0))
    );
    assert_eq!(table.due(before, at(2026, 12, 10, 10, 34, 59)), None);
}

/// Years without an instance: the one run due is the latest minute, found
/// from a window back from now, not by walking every minute missed.
#[test]
fn after_years_down_the_run_due_is_the_latest_firing() {
    let every_minute = Timetable::parse("* * * * *", None, None, false).unwrap();
    let now = at(2031, 6, 1, 12, 34, 56);
    assert_eq!(
        every_minute.due(at(2026, 1, 1, 0, 0, 0), now),
        Some(at(2031, 6, 1, 12, 34, 0))
    );
    let yearly = Timetable::parse("0 0 29 2 *", None, None, false).unwrap();
    assert_eq!(
        yearly.due(at(2021, 1, 1, 0, 0, 0), now),
        Some(at(2028, 2, 29, 0, 0, 0)),
        "a leap day, three years back"
    );
    assert_eq!(yearly.due(at(2028, 2, 29, 0, 0, 0), now), None);
}

#[test]
fn a_step_past_the_range_takes_the_first_value_alone() {
    let every_hour_at_one = CronSchedule::parse("1-59/4294967295 * * * *").unwrap();
    let from = at(2026, 12, 4, 10, 30, 0);
    assert_eq!(
        every_hour_at_one.next_after(from),
        Some(at(2026, 12, 4, 11, 1, 0))
    );
}

#[test]
fn dates_must_be_rfc_3339_and_the_end_after_the_start() {
    let refused = |start: Option<&str>, end: Option<&str>| {
        Timetable::parse("* * * * *", start, end, false)
            .unwrap_err()
            .to_string()
    };
    assert!(refused(Some("2026-12-10"), None).contains("start_date \"2026-12-10\" is not an RFC 3339"));
    assert!(refused(None, Some("tomorrow")).contains("end_date \"tomorrow\" is not an RFC 3339"));
    assert!(
        refused(Some("2026-12-10T00:00:00Z"), Some("2026-12-09T00:00:00Z"))
            .contains("end_date must be after start_date")
    );
    assert!(Timetable::parse("* * * * *", Some("2026-12-10T00:00:00+01:00"), None, false).is_ok());
}
