//! No change without its audit record: with the audit insert made to fail
//! (a trigger that raises), every kind of change is refused 503 and is not
//! made; refusals and reads refused for who sent them are audited too; an
//! operation's outcome names the user who asked for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use luna_api::on_both_backends;
use luna_api::testing::{hsm_certificate, Api, ADMIN_PASSWORD, TEST_INSTANCE};
use luna_pkcs11::testing::{fresh_token_label, USER_PIN};
use luna_store::testing::run_sql;
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";
const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";
const SERVERS: &str = "/connectionmgmt/services/luna-network/servers";

/// Makes every insert into the audit trail fail, as a full disk or a
/// revoked grant would.
fn refuse_audit_inserts(url: &str) {
    let sql = if url.starts_with("sqlite://") {
        "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_records \
         BEGIN SELECT RAISE(ABORT, 'audit insert refused by the test'); END;"
    } else {
        "CREATE FUNCTION audit_refused() RETURNS trigger AS $$ \
         BEGIN RAISE EXCEPTION 'audit insert refused by the test'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER audit_refused BEFORE INSERT ON audit_records \
         FOR EACH ROW EXECUTE FUNCTION audit_refused();"
    };
    run_sql(url, sql).unwrap();
}

fn allow_audit_inserts(url: &str) {
    let sql = if url.starts_with("sqlite://") {
        "DROP TRIGGER audit_refused;"
    } else {
        "DROP TRIGGER audit_refused ON audit_records; DROP FUNCTION audit_refused();"
    };
    run_sql(url, sql).unwrap();
}

/// A 503 that says the change was not made for want of its record, and
/// nothing of why underneath.
fn assert_refused_for_audit(what: &str, (status, body): (u16, Value)) {
    assert_eq!(status, 503, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not made") && message.contains("audit record"),
        "{what}: {body}"
    );
    assert!(
        !body.to_string().contains("refused by the test"),
        "{what}: internals in {body}"
    );
}

fn log_in(api: &Api, username: &str, password: &str) -> (u16, Value) {
    let body = json!({"grant_type": "password", "username": username, "password": password});
    api.call("POST", "/auth/tokens", None, Some(&body.to_string()))
}

fn total(api: &Api, path: &str) -> i64 {
    let (status, list) = api.get(path);
    assert_eq!(status, 200, "{path}: {list}");
    list["total"].as_i64().unwrap()
}

on_both_backends! {
    fn every_change_is_refused_503_and_not_made_when_its_audit_record_cannot_be_written(db: TestDatabase) {
        let url = db.url.clone();
        let api = Api::start(db);
        // What the changes below would change, made while the trail takes records.
        let partition = api.partition("audited", 1);
        let partition_id = partition["id"].as_str().unwrap().to_owned();
        let connection_id = partition["connection_id"].as_str().unwrap().to_owned();
        let (_, key) = api.send("POST", KEYS, &json!({"label": "kept", "size": 256, "partition_id": partition_id, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}));
        let key_id = key["id"].as_str().unwrap().to_owned();
        api.settled(&key_id);
        let (status, user) = api.send("POST", "/usermgmt/users", &json!({"username": "kim", "password": "kims-password", "groups": ["CCKM Users"]}));
        assert_eq!(status, 201, "{user}");
        let user_id = user["user_id"].as_str().unwrap().to_owned();
        let (status, kim) = log_in(&api, "kim", "kims-password");
        assert_eq!(status, 200, "{kim}");
        let spare = fresh_token_label("audited-spare");
        let (status, spare_connection) = api.send("POST", CONNECTIONS, &json!({"name": "spare", "password": USER_PIN, "partitions": [{"hostname": "softhsm", "partition_label": spare}]}));
        assert_eq!(status, 201, "{spare_connection}");
        let spare_id = spare_connection["id"].as_str().unwrap().to_owned();
        let keys_before = total(&api, KEYS);
        let records_before = total(&api, "/audit/records");

        refuse_audit_inserts(&url);
        let key_path = format!("{KEYS}/{key_id}");
        let user_path = format!("/usermgmt/users/{user_id}");
        let changes: Vec<(&str, (u16, Value))> = vec![
            ("key create", api.send("POST", KEYS, &json!({"label": "never", "size": 256, "partition_id": partition_id, "mechanism": "CKM_AES_KEY_GEN"}))),
            ("key update", api.send("PATCH", &key_path, &json!({"attributes": [{"type": "CKA_SIGN", "value": true}]}))),
            ("key destroy", api.post_empty(&format!("/cckm/hsm/luna/{key_id}/delete"))),
            ("key forget", api.call("DELETE", &key_path, Some(&api.token), None)),
            ("user create", api.send("POST", "/usermgmt/users", &json!({"username": "lee", "password": "lees-password"}))),
            ("user password", api.send("PATCH", &user_path, &json!({"password": "a-new-password"}))),
            ("group add", api.post_empty(&format!("/usermgmt/groups/CCKM%20Admins/users/{user_id}"))),
            ("user delete", api.call("DELETE", &user_path, Some(&api.token), None)),
            ("login", log_in(&api, "kim", "kims-password")),
            ("logout", api.call("DELETE", &format!("/auth/tokens/{}", kim["refresh_token_id"].as_str().unwrap()), Some(&api.token), None)),
            ("own password", api.call("PATCH", "/auth/changepw", None, Some(&json!({"username": "kim", "password": "kims-password", "new_password": "kims-new-password"}).to_string()))),
            ("connection create", api.send("POST", CONNECTIONS, &json!({"name": "never", "password": USER_PIN, "partitions": [{"hostname": "softhsm", "partition_label": fresh_token_label("never")}]}))),
            ("connection update", api.send("PATCH", &format!("{CONNECTIONS}/{spare_id}"), &json!({"description": "changed"}))),
            ("connection test", api.post_empty(&format!("{CONNECTIONS}/{spare_id}/test"))),
            ("connection delete", api.call("DELETE", &format!("{CONNECTIONS}/{spare_id}"), Some(&api.token), None)),
            ("partition add", api.send("POST", "/cckm/hsm/luna/add-partition", &json!({"connection": spare_id}))),
            ("partition forget", api.call("DELETE", &format!("/cckm/hsm/luna/partitions/{partition_id}"), Some(&api.token), None)),
            ("server create", api.send("POST", SERVERS, &json!({"hostname": "hsm.example", "hsm_certificate": hsm_certificate("hsm.example")}))),
            ("refresh start", api.send("POST", "/cckm/hsm/luna/refresh", &json!({"partitions": [partition_id]}))),
        ];
        for (what, answer) in changes {
            assert_refused_for_audit(what, answer);
        }

        allow_audit_inserts(&url);
        // None of them happened.
        assert_eq!(total(&api, KEYS), keys_before, "no key was made");
        let (_, key) = api.get(&key_path);
        assert_eq!((key["status"].as_str(), key["operation"].as_str(), key["operation_status"].as_str()), (Some("AVAILABLE"), Some("keycreate"), Some("created")), "no operation began: {key}");
        assert!(!key["attributes"].as_array().unwrap().iter().any(|a| a == "CKA_SIGN"), "{key}");
        assert_eq!(total(&api, "/usermgmt/users?username=lee"), 0);
        let (_, kim_now) = api.get(&user_path);
        assert_eq!(kim_now["groups"], json!(["CCKM Users"]));
        assert_eq!(log_in(&api, "kim", "kims-password").0, 200, "the old password stands");
        let (status, _) = api.call("GET", KEYS, kim["jwt"].as_str(), None);
        assert_eq!(status, 200, "the session that was to end is open");
        assert_eq!(total(&api, &format!("{CONNECTIONS}?name=never")), 0);
        let (_, spare_now) = api.get(&format!("{CONNECTIONS}/{spare_id}"));
        assert_eq!(spare_now["description"], "", "{spare_now}");
        assert_eq!(spare_now["last_connection_at"], Value::Null, "the test's outcome was not kept: {spare_now}");
        assert_eq!(total(&api, "/cckm/hsm/luna/partitions"), 1, "no partition added, none forgotten");
        assert_eq!(api.get(&format!("{CONNECTIONS}/{connection_id}")).0, 200);
        assert_eq!(total(&api, SERVERS), 0);
        assert_eq!(total(&api, "/cckm/hsm/luna/refresh"), 0);
        // And the trail holds no record of a change that did not happen,
        // and is whole (the two logins above are its only new records).
        let (_, trail) = api.get(&format!("/audit/records?limit={}", records_before + 10));
        assert_eq!(trail["total"].as_i64().unwrap(), records_before + 1, "{trail}");
        assert_eq!(api.get("/audit/verify").1, json!({"intact": true}));
    }

    // The rest of the kinds of change, on a server that runs no operation
    // (a job stays in progress to be cancelled).
    fn the_other_changes_are_refused_503_and_not_made_when_their_audit_record_cannot_be_written(db: TestDatabase) {
        let url = db.url.clone();
        let api = Api::start_with(db, 0);
        let partition = api.partition_with_domain("audited-ha", 2);
        let partition_id = partition["id"].as_str().unwrap().to_owned();
        let connection_id = partition["connection_id"].as_str().unwrap().to_owned();
        let members = format!("{CONNECTIONS}/{connection_id}/partitions");
        // The job on a partition of its own: one in progress holds its partition's members still.
        let single = api.partition("audited-job", 1);
        let (_, job) = api.send("POST", "/cckm/hsm/luna/refresh", &json!({"partitions": [single["id"]]}));
        let job_id = job["id"].as_str().unwrap().to_owned();
        let (status, server) = api.send("POST", SERVERS, &json!({"hostname": "hsm.example", "hsm_certificate": hsm_certificate("hsm.example")}));
        assert_eq!(status, 201, "{server}");
        let (_, user) = api.send("POST", "/usermgmt/users", &json!({"username": "kim", "password": "kims-password", "groups": ["CCKM Users"]}));
        let user_id = user["user_id"].as_str().unwrap().to_owned();
        let (_, kim) = log_in(&api, "kim", "kims-password");
        let serial = partition["members"][1]["serial_number"].as_str().unwrap().to_owned();

        refuse_audit_inserts(&url);
        let changes: Vec<(&str, (u16, Value))> = vec![
            ("server delete", api.call("DELETE", &format!("{SERVERS}/{}", server["id"].as_str().unwrap()), Some(&api.token), None)),
            ("group remove", api.call("DELETE", &format!("/usermgmt/groups/CCKM%20Users/users/{user_id}"), Some(&api.token), None)),
            ("member add", api.send("POST", &members, &json!({"hostname": "hsm3", "partition_label": fresh_token_label("audited-ha-2")}))),
            ("member remove", api.call("DELETE", &format!("{members}/{serial}"), Some(&api.token), None)),
            ("PIN change", api.send("PATCH", &format!("{CONNECTIONS}/{connection_id}"), &json!({"password": USER_PIN}))),
            ("job cancel", api.post_empty(&format!("/cckm/hsm/luna/refresh/{job_id}/cancel"))),
            ("synchronize start", api.send("POST", "/cckm/hsm/luna/synchronize", &json!({"partitions": [partition_id]}))),
            ("token refresh", api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "refresh_token", "refresh_token": kim["refresh_token"]}).to_string()))),
        ];
        for (what, answer) in changes {
            assert_refused_for_audit(what, answer);
        }

        allow_audit_inserts(&url);
        assert_eq!(total(&api, SERVERS), 1, "the server stays");
        assert_eq!(api.get(&format!("/usermgmt/users/{user_id}")).1["groups"], json!(["CCKM Users"]));
        let (_, connection) = api.get(&format!("{CONNECTIONS}/{connection_id}"));
        assert_eq!(connection["partitions"].as_array().unwrap().len(), 2, "no member added or removed: {connection}");
        let (_, job) = api.get(&format!("/cckm/hsm/luna/refresh/{job_id}"));
        assert_eq!(job["abort"], false, "{job}");
        assert_eq!(total(&api, "/cckm/hsm/luna/synchronize"), 0);
        let refreshed = api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "refresh_token", "refresh_token": kim["refresh_token"]}).to_string()));
        assert_eq!(refreshed.0, 200, "the refresh token was not used up: {}", refreshed.1);
        assert_eq!(api.get("/audit/verify").1, json!({"intact": true}));
    }

    fn records_say_who_did_what_to_which_resource_from_where_and_outcomes_name_who_asked(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("who", 1);
        let (_, key) = api.send("POST", KEYS, &json!({"label": "who", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}));
        let key_id = key["id"].as_str().unwrap().to_owned();
        api.settled(&key_id);
        let (_, admin) = api.get("/usermgmt/users?username=admin");
        let admin_id = admin["resources"][0]["user_id"].as_str().unwrap().to_owned();
        // Refused for who sent it, a read included: audited.
        let (status, _) = api.call("GET", KEYS, Some("not-a-token"), None);
        assert_eq!(status, 401);
        let (_, reader) = api.send("POST", "/usermgmt/users", &json!({"username": "rea", "password": "reas-password", "groups": ["CCKM Users"]}));
        let (_, rea) = log_in(&api, "rea", "reas-password");
        assert_eq!(api.call("GET", "/audit/records", rea["jwt"].as_str(), None).0, 403);

        let (_, trail) = api.get(&format!("/audit/records?resource_id={key_id}"));
        let records = trail["resources"].as_array().unwrap();
        let create = records.iter().find(|r| r["action"] == "POST /api/v1/cckm/hsm/luna/keys").unwrap_or_else(|| panic!("{trail}"));
        assert_eq!(create["format"], 3);
        assert_eq!((create["user_id"].as_str(), create["username"].as_str()), (Some(admin_id.as_str()), Some("admin")));
        assert_eq!((create["resource_type"].as_str(), create["outcome"].as_str()), (Some("key"), Some("201")));
        assert_eq!((create["source"].as_str(), create["instance"].as_str()), (Some("127.0.0.1"), Some(TEST_INSTANCE)));
        let outcome = records.iter().find(|r| r["action"] == "operation keycreate").unwrap_or_else(|| panic!("{trail}"));
        assert_eq!(outcome["username"], "admin", "the outcome names who asked: {outcome}");
        assert_eq!(outcome["user_id"], admin_id.as_str());
        assert_eq!(outcome["request_id"], create["request_id"], "and the request that asked");
        assert_eq!(outcome["outcome"], "succeeded");

        let (_, refusals) = api.get("/audit/records?action=GET%20/api/v1/cckm/hsm/luna/keys");
        assert!(refusals["resources"].as_array().unwrap().iter().any(|r| r["outcome"] == "401" && r["username"] == "-"), "{refusals}");
        let (_, forbidden) = api.get("/audit/records?username=rea&resource_type=audit_trail");
        let forbidden = &forbidden["resources"][0];
        assert_eq!((forbidden["outcome"].as_str(), forbidden["user_id"].as_str()), (Some("403"), reader["user_id"].as_str()), "{forbidden}");
        // Times filter: nothing before the epoch, everything since.
        assert_eq!(total(&api, "/audit/records?until=1970-01-02T00:00:00Z"), 0);
        assert_eq!(total(&api, "/audit/records?since=1970-01-02T00:00:00Z"), total(&api, "/audit/records"));
        let (status, bad) = api.get("/audit/records?since=yesterday");
        assert_eq!(status, 400, "{bad}");
        assert!(!trail.to_string().contains(ADMIN_PASSWORD) && !trail.to_string().contains(&api.token));
        // A refresh token sent to the logout route by mistake, and a path no
        // route has, stay out of the trail.
        let (status, _) = api.call("DELETE", "/auth/tokens/a-refresh-token-sent-by-mistake", Some(&api.token), None);
        assert_eq!(status, 404);
        let (status, _) = api.call("POST", "/no-such/secret-in-a-path", None, None);
        assert_eq!(status, 404);
        let (_, everything) = api.get("/audit/records?limit=1000");
        let everything = everything.to_string();
        assert!(!everything.contains("a-refresh-token-sent-by-mistake") && !everything.contains("secret-in-a-path"), "{everything}");
        assert!(everything.contains("DELETE /api/v1/auth/tokens/{id}") && everything.contains("POST (no route)"), "{everything}");
    }
}
