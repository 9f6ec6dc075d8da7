//! Schedules over HTTP (CipherTrust's `/api/v1/scheduler/job-configs`), on
//! SoftHSM2 tokens and SQLite or PostgreSQL: made, read, changed and
//! deleted in CipherTrust's shape, every bad field refused with a sentence,
//! readers kept to reading, and firings driven through the runner at times
//! the test chooses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use luna_api::on_both_backends;
use luna_api::testing::{assert_error, Api};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const CONFIGS: &str = "/scheduler/job-configs";

/// A create as CipherTrust's Terraform provider sends one: every field,
/// unset dates as Go's zero time, other operations' parameters null.
fn terraform_create(name: &str, run_at: &str, params: Value) -> Value {
    json!({
        "name": name,
        "description": "keep the records in step",
        "operation": "cckm_synchronization",
        "run_at": run_at,
        "run_on": "",
        "disabled": false,
        "start_date": "0001-01-01T00:00:00Z",
        "end_date": "0001-01-01T00:00:00Z",
        "database_backup_params": null,
        "cckm_key_rotation_params": null,
        "cckm_synchronization_params": params,
        "cckm_xks_credential_rotation_params": null
    })
}

fn instant(text: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(text.as_str().unwrap(), &Rfc3339).unwrap()
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

on_both_backends! {
    fn schedules_are_made_read_changed_and_deleted_in_ciphertrusts_shape(db: TestDatabase) {
        let api = Api::start(db);
        let (status, made) = api.send("POST", CONFIGS, &terraform_create("nightly", "0 2 * * SAT", json!({"cloud_name": "luna", "synchronize_all": true, "kms": null, "oci_vaults": null})));
        assert_eq!(status, 201, "{made}");
        let id = made["id"].as_str().unwrap().to_owned();
        for field in ["uri", "account", "application", "devAccount", "createdAt", "updatedAt"] {
            assert!(made[field].is_string(), "{field} in {made}");
        }
        assert_eq!(made["operation"], "cckm_synchronization");
        assert_eq!(made["run_at"], "0 2 * * SAT");
        assert_eq!(made["run_on"], "any");
        assert_eq!((made["start_date"].clone(), made["end_date"].clone()), (Value::Null, Value::Null));
        assert_eq!(made["job_config_params"], json!({"cloud_name": "luna", "job_type": "refresh", "partitions": null, "synchronize_all": true}));
        assert_eq!(made["last_run"], Value::Null);
        let next = instant(&made["next_run_at"]);
        assert_eq!((next.weekday(), next.hour(), next.minute()), (time::Weekday::Saturday, 2, 0), "{made}");
        assert_eq!(api.get(&format!("{CONFIGS}/{id}")).1, made);
        // The Terraform data source's list call: a trailing slash, skip=0&limit=-1.
        let (status, listed) = api.get(&format!("{CONFIGS}/?name=nightly&skip=0&limit=-1"));
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["total"], 1);
        assert_eq!(listed["resources"][0], made);
        assert_eq!(api.get(&format!("{CONFIGS}?operation=cckm_key_rotation")).1["total"], 0);

        // A change as the provider (1.0.1) sends one: every field, the name,
        // operation and cloud_name empty, unset dates as Go's zero time.
        let (status, changed) = api.send("PATCH", &format!("{CONFIGS}/{id}"), &json!({
            "name": "", "operation": "", "description": "off for now", "run_at": "0 2 * * SAT", "run_on": "",
            "disabled": true, "start_date": "0001-01-01T00:00:00Z", "end_date": "0001-01-01T00:00:00Z",
            "database_backup_params": null, "cckm_key_rotation_params": null,
            "cckm_synchronization_params": {"cloud_name": "", "kms": null, "oci_vaults": null, "synchronize_all": null}
        }));
        assert_eq!(status, 200, "{changed}");
        assert_eq!((changed["name"].as_str(), changed["disabled"].as_bool(), changed["next_run_at"].clone()), (Some("nightly"), Some(true), Value::Null));
        let start = OffsetDateTime::now_utc() + time::Duration::days(30);
        let (status, changed) = api.send("PATCH", &format!("{CONFIGS}/{id}"), &json!({"disabled": false, "run_at": "30 4 * * *", "start_date": rfc3339(start), "cckm_synchronization_params": {"job_type": "ha_synchronize"}}));
        assert_eq!(status, 200, "{changed}");
        assert!(instant(&changed["next_run_at"]) >= start, "no firing before start_date: {changed}");
        assert_eq!(changed["job_config_params"]["job_type"], "ha_synchronize");

        let (status, _) = api.send("POST", CONFIGS, &terraform_create("nightly", "0 3 * * *", json!({"cloud_name": "luna", "synchronize_all": true})));
        assert_eq!(status, 409, "a name is unique");

        let (_, trail) = api.get(&format!("/audit/records?resource_id={id}"));
        let actions: Vec<&str> = trail["resources"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"POST /api/v1/scheduler/job-configs"), "{actions:?}");
        assert!(actions.contains(&"PATCH /api/v1/scheduler/job-configs/{id}"), "{actions:?}");

        assert_eq!(api.call("DELETE", &format!("{CONFIGS}/{id}"), Some(&api.token), None).0, 204);
        let (status, body) = api.get(&format!("{CONFIGS}/{id}"));
        assert_error(status, &body, 404, 16);
        assert_eq!(api.call("DELETE", &format!("{CONFIGS}/{id}"), Some(&api.token), None).0, 404);
    }

    fn every_bad_schedule_is_a_4xx_with_a_sentence_and_readers_only_read(db: TestDatabase) {
        let api = Api::start(db);
        let all = json!({"cloud_name": "luna", "synchronize_all": true});
        let bad = [
            (terraform_create("a", "0 2 * *", all.clone()), "five fields"),
            (terraform_create("a", "61 * * * *", all.clone()), "minute field"),
            (terraform_create("a", "0 0 31 2 *", all.clone()), "would never run"),
            (json!({"name": "a", "operation": "cckm_synchronization", "run_at": "* * * * *", "start_date": "next week", "cckm_synchronization_params": all}), "RFC 3339"),
            (json!({"name": "a", "operation": "cckm_synchronization", "run_at": "* * * * *", "start_date": "2027-02-01T00:00:00Z", "end_date": "2027-01-01T00:00:00Z", "cckm_synchronization_params": all}), "end_date must be after start_date"),
            (json!({"name": "a", "operation": "database_backup", "run_at": "* * * * *", "database_backup_params": {"scope": "system"}}), "database_backup"),
            (terraform_create("a", "* * * * *", json!({"cloud_name": "aws", "kms": ["kms-1"]})), "another cloud"),
            (terraform_create("a", "* * * * *", json!({"cloud_name": "luna", "partitions": ["not-an-id"]})), "not a UUID"),
            (json!({"name": "a", "operation": "cckm_synchronization", "run_at": "* * * * *", "cckm_synchronization_params": all, "every": "day"}), "unknown field"),
            (json!({"name": "a", "operation": "cckm_synchronization", "run_at": "* * * * *"}), "cckm_synchronization_params is needed"),
        ];
        for (body, needle) in bad {
            let (status, answer) = api.send("POST", CONFIGS, &body);
            assert_eq!(status, 400, "{body} → {answer}");
            assert!(answer["message"].as_str().unwrap_or_default().contains(needle), "{body} should say {needle:?}: {answer}");
        }
        assert_eq!(api.get(CONFIGS).1["total"], 0, "nothing was made");
        let (status, body) = api.get(&format!("{CONFIGS}/not-an-id"));
        assert_error(status, &body, 404, 16);
        let (status, _) = api.get(&format!("{CONFIGS}?sort=size"));
        assert_eq!(status, 400);

        let (status, body) = api.send("POST", CONFIGS, &terraform_create("a", "* * * * *", json!({"cloud_name": "luna", "partitions": [uuid::Uuid::new_v4()]})));
        assert_error(status, &body, 404, 16);
        let (status, made) = api.send("POST", CONFIGS, &terraform_create("weekly", "0 2 * * sat", all.clone()));
        assert_eq!(status, 201, "{made}");
        let id = made["id"].as_str().unwrap();
        let (status, answer) = api.send("PATCH", &format!("{CONFIGS}/{id}"), &json!({"operation": "cckm_key_rotation"}));
        assert_eq!(status, 400, "{answer}");
        let (status, answer) = api.send("PATCH", &format!("{CONFIGS}/{id}"), &json!({"end_date": "1999-01-01T00:00:00Z", "start_date": "2000-01-01T00:00:00Z"}));
        assert_eq!(status, 400, "{answer}");

        let (_, user) = api.send("POST", "/usermgmt/users", &json!({"username": "kim", "password": "kims-password", "groups": ["CCKM Users"]}));
        assert!(user["user_id"].is_string(), "{user}");
        let (_, login) = api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "password", "username": "kim", "password": "kims-password"}).to_string()));
        let kim = login["jwt"].as_str().unwrap();
        assert_eq!(api.call("GET", CONFIGS, Some(kim), None).0, 200, "CCKM users read");
        assert_eq!(api.call("GET", &format!("{CONFIGS}/{id}"), Some(kim), None).0, 200);
        let body = terraform_create("mine", "* * * * *", all).to_string();
        assert_eq!(api.call("POST", CONFIGS, Some(kim), Some(&body)).0, 403, "only admins write");
        assert_eq!(api.call("PATCH", &format!("{CONFIGS}/{id}"), Some(kim), Some(r#"{"disabled": true}"#)).0, 403);
        assert_eq!(api.call("DELETE", &format!("{CONFIGS}/{id}"), Some(kim), None).0, 403);
        assert_eq!(api.call("GET", CONFIGS, None, None).0, 401);
    }

    fn a_firing_starts_a_job_naming_its_schedule_and_one_while_it_runs_is_skipped(db: TestDatabase) {
        // No workers: the job a firing starts stays in progress.
        let api = Api::start_with(db, 0);
        let partition = api.partition("scheduled", 1);
        // A start a day away: the server's own loop, on the real clock, leaves it to the test.
        let start = OffsetDateTime::now_utc() + time::Duration::days(1);
        let mut body = terraform_create("every-5", "*/5 * * * *", json!({"cloud_name": "luna", "partitions": [partition["id"]]}));
        body["start_date"] = json!(rfc3339(start));
        let (status, made) = api.send("POST", CONFIGS, &body);
        assert_eq!(status, 201, "{made}");
        let id = made["id"].as_str().unwrap().to_owned();
        let first = instant(&made["next_run_at"]);

        assert!(api.runner().fire_due_schedules(first - time::Duration::seconds(1)).unwrap().is_empty());
        let fired = api.runner().fire_due_schedules(first).unwrap();
        assert_eq!(fired.len(), 1);
        let (_, shown) = api.get(&format!("{CONFIGS}/{id}"));
        let job_id = shown["last_run"]["job_id"].as_str().unwrap().to_owned();
        assert_eq!(shown["last_run"]["at"], made["next_run_at"]);
        assert_eq!(shown["last_run"]["outcome"], "in_progress");
        assert_eq!(instant(&shown["next_run_at"]), first + time::Duration::minutes(5));
        let (_, job) = api.get(&format!("/cckm/hsm/luna/refresh/{job_id}"));
        assert_eq!((job["job_config_id"].as_str(), job["job_config_name"].as_str()), (Some(id.as_str()), Some("every-5")), "{job}");
        assert_eq!(job["partitions"], json!([partition["id"]]));

        // A second instance racing for the next firing would find it handled.
        assert!(api.runner().fire_due_schedules(first).unwrap().is_empty(), "a firing is handled once");
        let fired = api.runner().fire_due_schedules(first + time::Duration::minutes(5)).unwrap();
        assert_eq!(fired.len(), 1);
        let (_, shown) = api.get(&format!("{CONFIGS}/{id}"));
        assert_eq!(shown["last_run"]["outcome"], "skipped", "{shown}");
        assert!(shown["last_run"]["reason"].as_str().unwrap().contains(&job_id), "{shown}");
        assert_eq!(api.get("/cckm/hsm/luna/refresh").1["total"], 1, "no second job");

        let metrics = ureq::get(&format!("{}/metrics", api.base.trim_end_matches("/api/v1"))).call().unwrap().into_string().unwrap();
        assert!(metrics.contains(r#"luna_schedule_firings_total{outcome="started",schedule="every-5"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"luna_schedule_firings_total{outcome="skipped",schedule="every-5"} 1"#), "{metrics}");

        let (_, trail) = api.get(&format!("/audit/records?resource_id={id}&action=schedule%20fired"));
        let outcomes: Vec<&str> = trail["resources"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes.len(), 2, "{trail}");
        assert!(outcomes[0].starts_with("skipped: ") && outcomes[1] == format!("started refresh job {job_id}"), "{outcomes:?}");
    }
}
