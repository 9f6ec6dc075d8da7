//! The Schedules page: a schedule made (a bad timetable first, refused with
//! the server's sentence), its next run and, once it fired, its last run's
//! outcome; disabled, enabled and deleted.

use super::*;

#[test]
fn schedules_are_made_followed_disabled_and_deleted_from_the_console() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let partition = api.partition("console-scheduled", 1);
    let partition_id = partition["id"].as_str().unwrap().to_owned();
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/schedules"));
    browser.find("#schedules");
    browser.type_into("#new-schedule input[name=name]", "weekly-refresh");
    browser.type_into("#new-schedule input[name=run_at]", "0 2 * * caturday");
    browser.type_into("#new-schedule input[name=partitions]", &partition_id);
    browser.click("#new-schedule button[type=submit]");
    browser.wait("#new-schedule [role=alert]", |t| t.contains("day of the week"));

    browser.type_into("#new-schedule input[name=run_at]", "0 2 * * sat");
    browser.click("#new-schedule button[type=submit]");
    let row = "#schedules tr[data-name='weekly-refresh']";
    let text = browser.text(&browser.wait(row, |t| t.contains("never run")));
    assert!(
        text.contains("0 2 * * sat") && text.contains(&partition_id),
        "{text}"
    );
    let (_, listed) = api.get("/scheduler/job-configs?name=weekly-refresh");
    let schedule = &listed["resources"][0];
    let next = schedule["next_run_at"].as_str().unwrap().to_owned();
    browser.wait(&format!("{row} td.next-run"), |t| t == next);

    // Its firing, driven at its own time (the server's loop would wait for Saturday).
    let at = time::OffsetDateTime::parse(&next, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(api.runner().fire_due_schedules(at).unwrap().len(), 1);
    browser.goto(&format!("{root}/ui/#/keys"));
    browser.find("#keys");
    browser.goto(&format!("{root}/ui/#/schedules"));
    browser.wait(&format!("{row} td.last-run"), |t| {
        t.starts_with(&next) && t.contains("(job ")
    });
    browser.screenshot("schedules");

    browser.click(&format!("{row} button.toggle-schedule"));
    browser.wait(&format!("{row} td.next-run"), |t| t == "disabled");
    assert_eq!(
        api.get(&format!(
            "/scheduler/job-configs/{}",
            schedule["id"].as_str().unwrap()
        ))
        .1["disabled"],
        true
    );
    browser.click(&format!("{row} button.toggle-schedule"));
    browser.wait(&format!("{row} td.next-run"), |t| t != "disabled");
    browser.click(&format!("{row} button.delete-schedule"));
    browser.wait("#schedules tbody", |t| !t.contains("weekly-refresh"));
    assert_eq!(api.get("/scheduler/job-configs").1["total"], 0);
}
