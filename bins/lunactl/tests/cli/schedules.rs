//! `lunactl schedules`: made, listed, read, changed, disabled, enabled and
//! deleted, and a bad timetable refused with the server's sentence.

use super::*;

#[test]
fn schedules_are_made_listed_changed_disabled_and_deleted() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let user = User::new(&server_of(&api));
    assert!(user.login(&[]).ok);
    let made = user.run(&[
        "schedules",
        "create",
        "--name",
        "nightly",
        "--run-at",
        "0 2 * * sat",
        "--all",
        "--description",
        "records in step",
        "-o",
        "json",
    ]);
    let schedule = made.json();
    let id = schedule["id"].as_str().unwrap().to_owned();
    assert_eq!(schedule["job_config_params"]["synchronize_all"], true);
    assert_eq!(schedule["job_config_params"]["job_type"], "refresh");
    assert!(schedule["next_run_at"].is_string(), "{schedule}");

    let listed = user.run(&["schedules", "list", "--name", "nightly"]);
    assert!(listed.ok, "{}", listed.stderr);
    let header = listed.stdout.lines().next().unwrap();
    assert!(
        header.contains("NEXT_RUN_AT") && header.contains("LAST_RUN.OUTCOME"),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("0 2 * * sat"),
        "{}",
        listed.stdout
    );

    let changed = user
        .run(&[
            "schedules",
            "update",
            &id,
            "--run-at",
            "30 4 * * *",
            "--job-type",
            "ha_synchronize",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(changed["run_at"], "30 4 * * *");
    assert_eq!(changed["job_config_params"]["job_type"], "ha_synchronize");
    assert_eq!(
        changed["job_config_params"]["synchronize_all"], true,
        "the partitions were kept"
    );

    let disabled = user.run(&["schedules", "disable", &id, "-o", "json"]).json();
    assert_eq!(
        (disabled["disabled"].as_bool(), disabled["next_run_at"].clone()),
        (Some(true), Value::Null)
    );
    assert!(user
        .run(&["schedules", "list", "--disabled", "true"])
        .stdout
        .contains(&id));
    let enabled = user.run(&["schedules", "enable", &id, "-o", "json"]).json();
    assert!(enabled["next_run_at"].is_string(), "{enabled}");
    assert!(user.run(&["schedules", "get", &id]).stdout.contains("nightly"));

    let refused = user.run(&[
        "schedules",
        "create",
        "--name",
        "bad",
        "--run-at",
        "0 25 * * *",
        "--all",
    ]);
    assert!(
        !refused.ok && refused.stderr.contains("run_at's hour field"),
        "{}",
        refused.stderr
    );
    let neither = user.run(&["schedules", "create", "--name", "bad", "--run-at", "0 2 * * *"]);
    assert!(
        !neither.ok
            && neither
                .stderr
                .contains("give --all (every partition when it fires) or --partition ID"),
        "{}",
        neither.stderr
    );

    let deleted = user.run(&["schedules", "delete", &id]);
    assert!(
        deleted.ok && deleted.stdout.contains("deleted"),
        "{}",
        deleted.stderr
    );
    assert!(!user.run(&["schedules", "get", &id]).ok);
}
