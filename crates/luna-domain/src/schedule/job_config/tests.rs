//! Schedules: what a create and a change accept and refuse, and when one is due.

use super::*;

const PARTITION: &str = "fe192148-82eb-403f-96b2-125bf28d3824";

fn request() -> ScheduleRequest {
    ScheduleRequest {
        name: Some("nightly".into()),
        operation: Some(OPERATION.into()),
        run_at: Some("0 2 * * *".into()),
        params: Some(SynchronizationParams {
            cloud_name: Some(CLOUD_NAME.into()),
            synchronize_all: Some(true),
            ..SynchronizationParams::default()
        }),
        ..ScheduleRequest::default()
    }
}

/// An RFC 3339 instant.
fn t(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

fn now() -> OffsetDateTime {
    t("2026-12-07T10:30:00Z")
}

fn refusal(request: ScheduleRequest) -> String {
    request.create(Uuid::nil(), now()).unwrap_err().to_string()
}

#[test]
fn a_create_takes_ciphertrusts_fields_and_defaults_the_rest() {
    let schedule = request().create(Uuid::nil(), now()).unwrap();
    assert_eq!(schedule.name, "nightly");
    assert_eq!(schedule.run_on, RUN_ON_ANY);
    assert_eq!(schedule.job_type, JobType::Refresh);
    assert_eq!(schedule.scope, JobScope::All);
    assert!(!schedule.timetable.disabled);
    assert_eq!(schedule.fired_through, now());
    assert_eq!(schedule.next_run_at(), Some(t("2026-12-08T02:00:00Z")));

    // As the Terraform provider sends an unset date, and the other
    // operations' parameters: null.
    let terraform = ScheduleRequest {
        start_date: Some("0001-01-01T00:00:00Z".into()),
        end_date: Some(String::new()),
        run_on: Some(String::new()),
        description: Some("keys in step".into()),
        params: Some(SynchronizationParams {
            cloud_name: Some(CLOUD_NAME.into()),
            job_type: Some("ha_synchronize".into()),
            partitions: Some(vec![PARTITION.into(), PARTITION.into()]),
            synchronize_all: Some(false),
        }),
        ..request()
    };
    let schedule = terraform.create(Uuid::nil(), now()).unwrap();
    let shouted = ScheduleRequest {
        run_on: Some("ANY".into()),
        ..request()
    }
    .create(Uuid::nil(), now())
    .unwrap();
    assert_eq!(
        shouted.run_on, RUN_ON_ANY,
        "ANY is any, not an instance that never comes"
    );
    assert_eq!((schedule.timetable.start, schedule.timetable.end), (None, None));
    assert_eq!(schedule.job_type, JobType::HaSynchronize);
    assert_eq!(
        schedule.scope,
        JobScope::Partitions(vec![PARTITION.parse().unwrap()])
    );
}

#[test]
fn every_bad_field_is_refused_with_a_sentence_naming_it() {
    let params = |f: fn(&mut SynchronizationParams)| {
        let mut p = request().params.unwrap();
        f(&mut p);
        Some(p)
    };
    let cases: Vec<(ScheduleRequest, &str)> = vec![
        (
            ScheduleRequest {
                name: None,
                ..request()
            },
            "name is needed",
        ),
        (
            ScheduleRequest {
                name: Some("a\u{7}".into()),
                ..request()
            },
            "name must not contain control",
        ),
        (
            ScheduleRequest {
                run_at: Some("0 2 * *".into()),
                ..request()
            },
            "must have five fields",
        ),
        (
            ScheduleRequest {
                run_at: Some("0 25 * * *".into()),
                ..request()
            },
            "run_at's hour field",
        ),
        (
            ScheduleRequest {
                run_at: Some("0 2 * * caturday".into()),
                ..request()
            },
            "day of the week",
        ),
        (
            ScheduleRequest {
                run_at: None,
                ..request()
            },
            "run_at is needed",
        ),
        (
            ScheduleRequest {
                start_date: Some("tomorrow".into()),
                ..request()
            },
            "start_date \"tomorrow\" is not an RFC 3339",
        ),
        (
            ScheduleRequest {
                end_date: Some("2027-13-01T00:00:00Z".into()),
                ..request()
            },
            "end_date",
        ),
        (
            ScheduleRequest {
                start_date: Some("2027-02-01T00:00:00Z".into()),
                end_date: Some("2027-01-01T00:00:00Z".into()),
                ..request()
            },
            "end_date must be after start_date",
        ),
        (
            ScheduleRequest {
                operation: Some("database_backup".into()),
                ..request()
            },
            "is not run by this service",
        ),
        (
            ScheduleRequest {
                operation: Some("reboot".into()),
                ..request()
            },
            "is not a scheduler operation",
        ),
        (
            ScheduleRequest {
                operation: None,
                ..request()
            },
            "operation is needed",
        ),
        (
            ScheduleRequest {
                other_params: vec!["cckm_key_rotation_params".into()],
                ..request()
            },
            "cckm_key_rotation_params is for cckm_key_rotation",
        ),
        (
            ScheduleRequest {
                params: None,
                ..request()
            },
            "cckm_synchronization_params is needed",
        ),
        (
            ScheduleRequest {
                params: params(|p| p.cloud_name = Some("aws".into())),
                ..request()
            },
            "cloud_name \"aws\"",
        ),
        (
            ScheduleRequest {
                params: params(|p| p.job_type = Some("rotate".into())),
                ..request()
            },
            "job_type",
        ),
        (
            ScheduleRequest {
                params: params(|p| p.partitions = Some(vec![PARTITION.into()])),
                ..request()
            },
            "mutually exclusive",
        ),
        (
            ScheduleRequest {
                params: params(|p| {
                    p.partitions = Some(vec!["p1".into()]);
                    p.synchronize_all = None;
                }),
                ..request()
            },
            "not a UUID",
        ),
        (
            ScheduleRequest {
                params: params(|p| p.synchronize_all = None),
                ..request()
            },
            "give either",
        ),
        (
            ScheduleRequest {
                description: Some("x".repeat(1025)),
                ..request()
            },
            "description has more than",
        ),
        (
            ScheduleRequest {
                run_on: Some("node 2".into()),
                ..request()
            },
            "run_on \"node 2\" is neither",
        ),
        (
            ScheduleRequest {
                run_at: Some(format!("0 2 * * {}", "1,".repeat(60))),
                ..request()
            },
            "longer than 100",
        ),
        (
            ScheduleRequest {
                run_at: Some("+5 * * * *".into()),
                ..request()
            },
            "minute field",
        ),
        (
            ScheduleRequest {
                start_date: Some("9999-12-31T23:59:30Z".into()),
                ..request()
            },
            "years 1970 to 9998",
        ),
        (
            ScheduleRequest {
                end_date: Some("9999-12-31T23:00:00-05:00".into()),
                ..request()
            },
            "end_date",
        ),
        (
            ScheduleRequest {
                start_date: Some("1969-12-31T23:00:00Z".into()),
                ..request()
            },
            "years 1970 to 9998",
        ),
        (
            ScheduleRequest {
                run_at: Some("0 2 * * sat".into()),
                start_date: Some("2027-01-01T00:00:00Z".into()),
                end_date: Some("2027-01-01T00:30:00Z".into()),
                ..request()
            },
            "names no minute between start_date and end_date",
        ),
        (
            ScheduleRequest {
                run_at: Some("0 0 29 2 *".into()),
                start_date: Some("9998-03-01T00:00:00Z".into()),
                ..request()
            },
            "it would never run",
        ),
    ];
    for (bad, needle) in cases {
        let said = refusal(bad);
        assert!(said.contains(needle), "{said:?} should say {needle:?}");
    }
}

#[test]
fn a_change_keeps_what_it_does_not_name_and_a_new_timetable_counts_from_now() {
    let made = request().create(Uuid::nil(), now()).unwrap();
    let later = now() + time::Duration::days(3);

    // As the Terraform provider sends a change: every field, empty when unset.
    let renamed = ScheduleRequest {
        name: Some(String::new()),
        operation: Some(String::new()),
        description: Some("weekly now".into()),
        ..ScheduleRequest::default()
    }
    .change(&made, later)
    .unwrap();
    assert_eq!(renamed.name, "nightly");
    assert_eq!(renamed.description, "weekly now");
    assert_eq!(renamed.updated_at, later);
    assert_eq!(renamed.fired_through, now(), "the timetable did not change");

    let retimed = ScheduleRequest {
        run_at: Some("0 9 * * MON".into()),
        end_date: Some("2027-06-01T00:00:00Z".into()),
        params: Some(SynchronizationParams {
            job_type: Some("ha_synchronize".into()),
            ..SynchronizationParams::default()
        }),
        ..ScheduleRequest::default()
    }
    .change(&made, later)
    .unwrap();
    assert_eq!(
        retimed.fired_through, later,
        "no firing before the change is caught up"
    );
    assert_eq!(retimed.job_type, JobType::HaSynchronize);
    assert_eq!(retimed.scope, JobScope::All, "the partitions were not named");
    assert_eq!(retimed.timetable.end, Some(t("2027-06-01T00:00:00Z")));

    let cleared = ScheduleRequest {
        end_date: Some(String::new()),
        disabled: Some(true),
        ..ScheduleRequest::default()
    }
    .change(&retimed, later)
    .unwrap();
    assert_eq!(cleared.timetable.end, None);
    assert_eq!(cleared.next_run_at(), None, "a disabled schedule has no next run");

    let unchanged = ScheduleRequest::default().change(&made, later).unwrap();
    assert_eq!(
        unchanged, made,
        "an empty change changes nothing, not even updated_at"
    );

    for (bad, needle) in [
        (
            ScheduleRequest {
                operation: Some("cckm_key_rotation".into()),
                ..ScheduleRequest::default()
            },
            "not run by this service",
        ),
        (
            ScheduleRequest {
                start_date: Some("2027-07-01T00:00:00Z".into()),
                ..ScheduleRequest::default()
            },
            "end_date must be after start_date",
        ),
        (
            ScheduleRequest {
                name: Some(" ".into()),
                ..ScheduleRequest::default()
            },
            "name must not be empty",
        ),
    ] {
        let said = bad.change(&retimed, later).unwrap_err().to_string();
        assert!(said.contains(needle), "{said:?} should say {needle:?}");
    }
}

#[test]
fn firings_missed_give_one_run_and_each_firing_is_for_its_own_minute() {
    let mut schedule = ScheduleRequest {
        run_at: Some("*/15 * * * *".into()),
        ..request()
    }
    .create(Uuid::nil(), now())
    .unwrap();
    assert_eq!(schedule.due(t("2026-12-07T10:44:59Z")), None);
    let firing = schedule.due(t("2026-12-07T10:45:00Z")).unwrap();
    assert_eq!(firing.at, t("2026-12-07T10:45:00Z"));
    assert_eq!(firing.next, Some(t("2026-12-07T11:00:00Z")));

    // Every instance was down for a day: one run, the latest missed.
    let firing = schedule.due(t("2026-12-08T10:52:10Z")).unwrap();
    assert_eq!(firing.at, t("2026-12-08T10:45:00Z"));
    schedule.fired_through = firing.at;
    assert_eq!(schedule.next_run_at(), Some(t("2026-12-08T11:00:00Z")));
    assert_eq!(schedule.due(t("2026-12-08T10:59:00Z")), None);

    assert!(schedule.runs_on("instance-a"));
    schedule.run_on = "instance-b".into();
    assert!(!schedule.runs_on("instance-a") && schedule.runs_on("instance-b"));
}
