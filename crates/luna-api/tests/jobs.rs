//! Refresh and synchronize jobs over HTTP, on real SoftHSM2 tokens, on SQLite
//! and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use luna_api::on_both_backends;
use luna_api::testing::{assert_error, assert_shaped_like, reference, Api};
use luna_domain::{AttributeSet, Mechanism};
use luna_pkcs11::testing::{module, USER_PIN};
use luna_pkcs11::{GenerateRequest, Pkcs11Token, Token as _};
use secrecy::SecretString;
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";

fn token_of(partition: &Value, member: usize) -> Pkcs11Token {
    let label = partition["members"][member]["partition_label"].as_str().unwrap();
    module()
        .open_token(label, None, SecretString::from(USER_PIN))
        .unwrap()
}

/// Makes a key straight on the token, behind the service's back.
fn outside_key(token: &Pkcs11Token, mechanism: Mechanism, size: u32, cka_id: Vec<u8>) {
    token
        .generate(&GenerateRequest {
            cka_id,
            label: "made-outside".into(),
            mechanism,
            size,
            attributes: AttributeSet::parse_names(&["CKA_MODIFIABLE", "CKA_ENCRYPT"]).unwrap(),
            remap: true,
            retry: false,
            wrap_with_trusted: false,
        })
        .unwrap();
}

/// Polls a job until it ends.
fn ended(api: &Api, kind: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = api.get(&format!("/cckm/hsm/luna/{kind}/{id}"));
        assert_eq!(status, 200, "{job}");
        if job["overall_status"] != "in_progress" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still running: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(api: &Api, kind: &str, body: Value) -> Value {
    let (status, job) = api.send("POST", &format!("/cckm/hsm/luna/{kind}"), &body);
    assert_eq!(status, 201, "{job}");
    job
}

/// Instance A (no workers) takes requests; instance B, on the same database,
/// runs every operation. B's refresh stops between its scan and its reading
/// of the records, and there a create through A runs to its end (on B's other
/// worker): the key's object was made after the scan went by, and its record
/// is AVAILABLE when the refresh reads it.
fn a_create_that_ends_between_a_refresh_scan_and_its_plan_is_not_deleted(
    db: luna_store::testing::TestDatabase,
) {
    let a = Api::start_with(db, 0);
    let partition = a.partition("race", 1);
    let pid = partition["id"].as_str().unwrap().to_owned();
    let created = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let hook = {
        let (base, token, pid, created) = (
            a.base.clone(),
            a.token.clone(),
            pid.clone(),
            std::sync::Arc::clone(&created),
        );
        move || {
            let mut created = created.lock().unwrap();
            if created.is_some() {
                return;
            }
            let call = |request: ureq::Request| match request
                .set("Authorization", &format!("Bearer {token}"))
                .call()
            {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r.into_json::<Value>().unwrap(),
                Err(e) => panic!("{e}"),
            };
            let answer = match ureq::post(&format!("{base}{KEYS}"))
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(json!({"label": "made-during-refresh", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}))
            {
                Ok(r) => r.into_json::<Value>().unwrap(),
                Err(e) => panic!("{e}"),
            };
            let id = answer["id"].as_str().unwrap().to_owned();
            let deadline = Instant::now() + Duration::from_secs(30);
            while call(ureq::get(&format!("{base}{KEYS}/{id}")))["status"] != "AVAILABLE" {
                assert!(Instant::now() < deadline, "the create ran on the other worker");
                std::thread::sleep(Duration::from_millis(20));
            }
            *created = Some(id);
        }
    };
    let b = a.beside(luna_runner::RunnerSettings {
        after_scan: Some(luna_runner::Hook(std::sync::Arc::new(hook))),
        ..luna_api::testing::runner_settings(2)
    });
    let job = start(&a, "refresh", json!({"partitions": [pid]}));
    assert_eq!(
        ended(&b, "refresh", job["id"].as_str().unwrap())["overall_status"],
        "completed"
    );
    let id = created
        .lock()
        .unwrap()
        .clone()
        .expect("the create landed between the scan and the plan");
    let key = a.get(&format!("{KEYS}/{id}")).1;
    assert_eq!(
        (key["status"].as_str(), key["operation_status"].as_str()),
        (Some("AVAILABLE"), Some("created")),
        "{key}"
    );
    // The next refresh sees the object, and the key stays managed.
    let job = start(&a, "refresh", json!({"partitions": [pid]}));
    assert_eq!(
        ended(&b, "refresh", job["id"].as_str().unwrap())["overall_status"],
        "completed"
    );
    let key = a.get(&format!("{KEYS}/{id}")).1;
    assert_eq!(key["status"], "AVAILABLE", "{key}");
    assert!(
        key["replication_info"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == "available"),
        "{key}"
    );
    drop(b);
}

#[test]
fn postgres_a_create_that_ends_between_a_refresh_scan_and_its_plan_is_not_deleted() {
    a_create_that_ends_between_a_refresh_scan_and_its_plan_is_not_deleted(
        luna_store::testing::TestDatabase::postgres().unwrap(),
    );
}

#[test]
fn sqlite_a_create_that_ends_between_a_refresh_scan_and_its_plan_is_not_deleted() {
    a_create_that_ends_between_a_refresh_scan_and_its_plan_is_not_deleted(
        luna_store::testing::TestDatabase::sqlite().unwrap(),
    );
}

on_both_backends! {
    fn refresh_finds_outside_keys_picks_up_changes_and_ends_gone_ones_deleted(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("refresh", 1);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let token = token_of(&partition, 0);
        outside_key(&token, Mechanism::AesKeyGen, 256, b"outside-aes".to_vec());
        outside_key(&token, Mechanism::RsaPkcsKeyPairGen, 2048, b"outside-rsa".to_vec());
        outside_key(&token, Mechanism::AesKeyGen, 128, Vec::new()); // no CKA_ID at all
        let (_, made) = api.send("POST", KEYS, &json!({"label": "ours", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}));
        let ours = made["id"].as_str().unwrap().to_owned();
        api.settled(&ours);

        let job = start(&api, "refresh", json!({"partitions": [pid]}));
        assert_shaped_like(&job, &reference("refresh_create"), "refresh");
        assert_eq!((job["overall_status"].as_str(), job["abort"].as_bool(), job["job_type"].as_str()), (Some("in_progress"), Some(false), Some("refresh")));
        let done = ended(&api, "refresh", job["id"].as_str().unwrap());
        assert_shaped_like(&done, &reference("refresh_get"), "refresh");
        assert_eq!(done["overall_status"], "completed", "{done}");
        assert_eq!(done["detailed_status"][&pid], "completed");
        assert!(done["completed_at"].is_string());

        let (_, external) = api.get(&format!("{KEYS}?origin=external&partition_id={pid}"));
        assert_eq!(external["total"], 4, "an AES key, an RSA pair and a key without CKA_ID: {external}");
        let resources = external["resources"].as_array().unwrap();
        let private = resources.iter().find(|k| k["object_type"] == "private key").unwrap();
        let public = resources.iter().find(|k| k["object_type"] == "public key").unwrap();
        assert_eq!((private["link_id"].as_str(), public["link_id"].as_str()), (public["id"].as_str(), private["id"].as_str()));
        assert!(resources.iter().any(|k| k["object_uid"].as_str().unwrap().starts_with("fp-")), "the key without CKA_ID is tracked by fingerprint");
        assert!(resources.iter().all(|k| k["status"] == "AVAILABLE" && k["label"] == "made-outside"));
        assert_eq!(api.get(&format!("{KEYS}?origin=cckm")).1["total"], 1, "our key is not duplicated");

        // Behind the service's back: our key's object goes, an outside key changes.
        let cka_id = uuid::Uuid::parse_str(&ours).unwrap();
        for object in token.find_by_id(cka_id.as_bytes()).unwrap() {
            token.destroy(object.handle).unwrap();
        }
        let aes = token.find_by_id(b"outside-aes").unwrap().remove(0);
        token.set_attributes(aes.handle, &[(luna_domain::Attribute::Sign, true)]).unwrap();
        let second = start(&api, "refresh", json!({"synchronize_all": true}));
        assert_eq!(ended(&api, "refresh", second["id"].as_str().unwrap())["overall_status"], "completed");
        assert_eq!(api.settled(&ours)["status"], "DELETED");
        let (_, list) = api.get(&format!("{KEYS}?origin=external&size=256"));
        assert!(list["resources"][0]["attributes"].as_array().unwrap().contains(&json!("CKA_SIGN")), "{list}");
        assert_eq!(api.get(&format!("{KEYS}?origin=external")).1["total"], 4, "a second refresh adds nothing twice");

        // Lists of jobs: both refreshes, newest first; filters.
        let (_, jobs) = api.get("/cckm/hsm/luna/refresh?skip=0&limit=10");
        assert_shaped_like(&jobs, &reference("refresh_list"), "list");
        assert_eq!(jobs["total"], 2);
        assert_eq!(jobs["resources"][0]["id"], second["id"]);
        assert_eq!(api.get("/cckm/hsm/luna/refresh?overall_status=failed").1["total"], 0);
        assert_eq!(api.get(&format!("/cckm/hsm/luna/refresh?id={}", job["id"].as_str().unwrap())).1["total"], 1);
        assert_eq!(api.get("/cckm/hsm/luna/synchronize").1["total"], 0);
    }

    fn cancel_answers_at_once_and_the_job_ends_cancelled(db: TestDatabase) {
        // No workers: the job waits while it is cancelled, then a server with
        // workers takes it up and stops it at its first batch.
        let api = Api::start_with(db, 0);
        let partition = api.partition("cancel", 1);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let job = start(&api, "refresh", json!({"partitions": [pid]}));
        let id = job["id"].as_str().unwrap().to_owned();
        let (status, second) = api.send("POST", "/cckm/hsm/luna/refresh", &json!({"partitions": [pid]}));
        assert_error(status, &second, 409, 13);
        let sync = start(&api, "synchronize", json!({"partitions": [pid]}));
        let (status, cancelled) = api.post_empty(&format!("/cckm/hsm/luna/refresh/{id}/cancel"));
        assert_eq!(status, 200, "{cancelled}");
        assert_shaped_like(&cancelled, &reference("refresh_cancel"), "cancel");
        assert_eq!((cancelled["abort"].as_bool(), cancelled["overall_status"].as_str()), (Some(true), Some("in_progress")));
        let db = api.stop();

        let api = Api::start(db);
        let done = ended(&api, "refresh", &id);
        assert_eq!(done["overall_status"], "cancelled", "{done}");
        assert_eq!(done["detailed_status"][&pid], "cancelled");
        assert!(done["completed_at"].is_string());
        let (status, again) = api.post_empty(&format!("/cckm/hsm/luna/refresh/{id}/cancel"));
        assert_error(status, &again, 409, 13);
        // The synchronize on the single partition completes at once; a new refresh may start.
        assert_eq!(ended(&api, "synchronize", sync["id"].as_str().unwrap())["overall_status"], "completed");
        let next = start(&api, "refresh", json!({"partitions": [pid]}));
        assert_eq!(ended(&api, "refresh", next["id"].as_str().unwrap())["overall_status"], "completed");
    }

    fn without_a_cloning_domain_extractable_keys_replicate_and_others_say_why(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("nodomain", 2);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let second = partition["members"][1]["serial_number"].as_str().unwrap();

        // Extractable: cloned under a key the members agree for the transfer.
        let (_, open_key) = api.send("POST", KEYS, &json!({"label": "open", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_EXTRACTABLE", "CKA_ENCRYPT"]}));
        let key = api.settled(open_key["id"].as_str().unwrap());
        assert_eq!((key["replicated"].as_bool(), key["replication_info"][second].as_str()), (Some(true), Some("available")), "{key}");
        let (_, pair) = api.send("POST", KEYS, &json!({"label": "open-pair", "size": 2048, "partition_id": pid, "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN", "attributes": ["CKA_EXTRACTABLE", "CKA_SIGN", "CKA_VERIFY"]}));
        assert_eq!(api.settled(pair["id"].as_str().unwrap())["replicated"], true);
        let cka_id = uuid::Uuid::parse_str(pair["id"].as_str().unwrap()).unwrap();
        assert_eq!(token_of(&partition, 1).find_by_id(cka_id.as_bytes()).unwrap().len(), 2, "both halves on the second member");

        // Not extractable: it stays on the first member, and says why.
        let (_, made) = api.send("POST", KEYS, &json!({"label": "on-first", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}));
        let key = api.settled(made["id"].as_str().unwrap());
        let reason = key["replication_info"][second].as_str().unwrap();
        assert!(reason.contains("not extractable") && reason.contains("share no cloning domain"), "{key}");
        assert_eq!(key["replicated"], false);
        let job = start(&api, "synchronize", json!({"partitions": [pid]}));
        assert_shaped_like(&job, &reference("synchronize_create"), "synchronize");
        assert_eq!(job["job_type"], "ha_synchronize");
        let done = ended(&api, "synchronize", job["id"].as_str().unwrap());
        assert_eq!(done["overall_status"], "failed", "{done}");
        assert!(done["detailed_status"][&pid].as_str().unwrap().contains("share no cloning domain"), "{done}");
    }

    fn within_a_cloning_domain_keys_replicate_and_synchronize(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition_with_domain("domain", 2);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let serials: Vec<String> = partition["members"].as_array().unwrap().iter().map(|m| m["serial_number"].as_str().unwrap().to_owned()).collect();
        let (first, second) = (token_of(&partition, 0), token_of(&partition, 1));

        // A key the user made not extractable still clones within the domain.
        let (_, made) = api.send("POST", KEYS, &json!({"label": "locked", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_SENSITIVE", "CKA_ENCRYPT", "CKA_MODIFIABLE"]}));
        let id = made["id"].as_str().unwrap().to_owned();
        let key = api.settled(&id);
        assert_eq!((key["replicated"].as_bool(), key["replication_info"][&serials[1]].as_str()), (Some(true), Some("available")), "{key}");
        assert!(!key["attributes"].as_array().unwrap().contains(&json!("CKA_EXTRACTABLE")), "reported as the user set it: {key}");
        let cka_id = uuid::Uuid::parse_str(&id).unwrap();
        let copy = second.find_by_id(cka_id.as_bytes()).unwrap().remove(0);
        assert!(copy.wrap_with_trusted, "only the domain may wrap it on the other member too");

        // An object lost on one member: refresh says so, replicate brings it back.
        second.destroy(copy.handle).unwrap();
        let job = start(&api, "refresh", json!({"partitions": [pid]}));
        assert_eq!(ended(&api, "refresh", job["id"].as_str().unwrap())["overall_status"], "completed");
        let key = api.get(&format!("{KEYS}/{id}")).1;
        assert_eq!(key["replication_info"][&serials[1]], "the key is not on this member", "{key}");
        assert_eq!((key["replicated"].as_bool(), key["status"].as_str()), (Some(false), Some("AVAILABLE")));
        let (status, _) = api.post_empty(&format!("{KEYS}/{id}/replicate"));
        assert_eq!(status, 200);
        let key = api.settled(&id);
        assert_eq!((key["operation_status"].as_str(), key["replicated"].as_bool()), (Some("completed"), Some(true)), "{key}");
        assert_eq!(second.find_by_id(cka_id.as_bytes()).unwrap().len(), 1);

        // PATCH CKA_EXTRACTABLE true -> false: the record changes, the key still clones.
        let (_, rsa) = api.send("POST", KEYS, &json!({"label": "pair", "size": 2048, "partition_id": pid, "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN", "attributes": ["CKA_EXTRACTABLE", "CKA_MODIFIABLE", "CKA_SIGN"]}));
        let rsa_id = rsa["id"].as_str().unwrap().to_owned();
        assert!(api.settled(&rsa_id)["attributes"].as_array().unwrap().contains(&json!("CKA_EXTRACTABLE")));
        let (status, _) = api.send("PATCH", &format!("{KEYS}/{rsa_id}"), &json!({"attributes": [{"type": "CKA_EXTRACTABLE", "value": false}]}));
        assert_eq!(status, 200);
        let patched = api.settled(&rsa_id);
        assert_eq!(patched["operation_status"], "completed", "{patched}");
        assert!(!patched["attributes"].as_array().unwrap().contains(&json!("CKA_EXTRACTABLE")), "{patched}");
        let rsa_cka = uuid::Uuid::parse_str(&rsa_id).unwrap();
        for object in second.find_by_id(rsa_cka.as_bytes()).unwrap() {
            second.destroy(object.handle).unwrap();
        }

        // Synchronize clones what a member lacks: the pair, and a key made outside on the first member only.
        let mut outside = GenerateRequest {
            cka_id: b"outside-only-on-first".to_vec(),
            label: "outside".into(),
            mechanism: Mechanism::AesKeyGen,
            size: 128,
            attributes: AttributeSet::parse_names(&["CKA_EXTRACTABLE", "CKA_ENCRYPT"]).unwrap(),
            remap: true,
            wrap_with_trusted: false,
            retry: false,
        };
        outside.wrap_with_trusted = false;
        first.generate(&outside).unwrap();
        let job = start(&api, "synchronize", json!({"partitions": [pid]}));
        let done = ended(&api, "synchronize", job["id"].as_str().unwrap());
        assert_eq!(done["overall_status"], "completed", "{done}");
        assert_eq!(second.find_by_id(rsa_cka.as_bytes()).unwrap().len(), 2, "both halves are back");
        assert_eq!(second.find_by_id(b"outside-only-on-first").unwrap().len(), 1);
        let (_, external) = api.get(&format!("{KEYS}?origin=external&partition_id={pid}"));
        assert_eq!(external["total"], 1, "{external}");
        assert_eq!(external["resources"][0]["replicated"], true);
        assert_eq!(api.get(&format!("{KEYS}/{rsa_id}")).1["replicated"], true);
    }

    fn a_refresh_of_thousands_of_objects_is_cancelled_mid_way(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("midway", 1);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let token = token_of(&partition, 0);
        let objects = 1500;
        for i in 0..objects {
            outside_key(&token, Mechanism::AesKeyGen, 128, format!("midway-{i}").into_bytes());
        }
        // The cancel follows the start by milliseconds; the survey of 1,500
        // objects takes hundreds. Should the job still win, start another.
        let mut cancelled = None;
        for _ in 0..5 {
            let job = start(&api, "refresh", json!({"partitions": [pid]}));
            let id = job["id"].as_str().unwrap().to_owned();
            let (status, answer) = api.post_empty(&format!("/cckm/hsm/luna/refresh/{id}/cancel"));
            match status {
                200 => {
                    assert_eq!(answer["abort"], true);
                    cancelled = Some(id);
                    break;
                }
                409 => continue,
                other => panic!("cancel answered {other}: {answer}"),
            }
        }
        let id = cancelled.expect("a cancel reached a running refresh");
        let done = ended(&api, "refresh", &id);
        assert_eq!(done["overall_status"], "cancelled", "{done}");
        assert_eq!(done["detailed_status"][&pid], "cancelled");
        let recorded = api.get(&format!("{KEYS}?origin=external&partition_id={pid}&limit=1")).1["total"].as_u64().unwrap();
        assert!(recorded < objects, "the job stopped before recording every object ({recorded} of {objects})");
    }

    fn a_member_that_is_down_fails_its_part_and_the_others_complete(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition_with_domain("down", 2);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let down_label = partition["members"][1]["partition_label"].as_str().unwrap().to_owned();
        let down_serial = partition["members"][1]["serial_number"].as_str().unwrap().to_owned();
        // Behind the service's back, the second member's PIN changes: the
        // service can no longer log in to it.
        let raw = luna_pkcs11::testing::raw_user_session(&down_label);
        raw.set_pin(&SecretString::from(USER_PIN), &SecretString::from("changed-behind-its-back")).unwrap();
        raw.logout().unwrap();
        drop(raw);

        let (_, made) = api.send("POST", KEYS, &json!({"label": "half-way", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}));
        let key = api.settled(made["id"].as_str().unwrap());
        assert_eq!((key["status"].as_str(), key["operation_status"].as_str()), (Some("AVAILABLE"), Some("created")), "{key}");
        assert_eq!(key["replication_info"][partition["members"][0]["serial_number"].as_str().unwrap()], "available");
        let reason = key["replication_info"][&down_serial].as_str().unwrap();
        assert!(reason.contains("not reachable") && reason.contains("CKR_PIN_INCORRECT"), "{reason}");
        assert_eq!(key["replicated"], false);

        let job = start(&api, "refresh", json!({"partitions": [pid]}));
        let done = ended(&api, "refresh", job["id"].as_str().unwrap());
        assert_eq!(done["overall_status"], "completed", "a refresh reads the members it can: {done}");
        let key = api.get(&format!("{KEYS}/{}", made["id"].as_str().unwrap())).1;
        assert_eq!(key["status"], "AVAILABLE", "nothing is concluded from a member that cannot be read");
        assert!(key["replication_info"][&down_serial].as_str().unwrap().contains("CKR_PIN_INCORRECT"));
    }

    fn every_bad_job_request_is_a_4xx(db: TestDatabase) {
        let api = Api::start_with(db, 0);
        let partition = api.partition("badjob", 1);
        for kind in ["refresh", "synchronize"] {
            let path = format!("/cckm/hsm/luna/{kind}");
            for (body, expected, needle) in [
                (json!({"partitions": [partition["id"]], "synchronize_all": true}), 400, "mutually exclusive"),
                (json!({}), 400, "give either"),
                (json!({"partitions": [], "synchronize_all": false}), 400, "give either"),
                (json!({"partitions": ["nope"]}), 400, "is not a UUID"),
                (json!({"partitions": [uuid::Uuid::new_v4()]}), 404, "does not exist"),
                (json!({"synchronize_all": "yes"}), 400, "invalid type"),
                (json!({"synchronize_all": true, "extra": 1}), 400, "unknown field"),
            ] {
                let (status, answer) = api.send("POST", &path, &body);
                assert_error(status, &answer, expected, if expected == 400 { 15 } else { 16 });
                assert!(answer["message"].as_str().unwrap().contains(needle), "{kind} {body}: {answer}");
            }
            for (query, needle) in [("overall_status=done", "allowed: in_progress, completed, failed, cancelled"), ("limit=0", "limit must be"), ("colour=red", "unknown query parameter")] {
                let (status, answer) = api.get(&format!("{path}?{query}"));
                assert_error(status, &answer, 400, 15);
                assert!(answer["message"].as_str().unwrap().contains(needle), "{answer}");
            }
            for (method, p) in [("GET", format!("{path}/nope")), ("GET", format!("{path}/{}", uuid::Uuid::new_v4())), ("POST", format!("{path}/{}/cancel", uuid::Uuid::new_v4()))] {
                let (status, answer) = api.call(method, &p, Some(&api.token), None);
                assert_error(status, &answer, 404, 16);
            }
        }
        // A refresh job is not found under synchronize, and the other way round.
        let job = start(&api, "refresh", json!({"synchronize_all": true}));
        assert_eq!(api.get(&format!("/cckm/hsm/luna/synchronize/{}", job["id"].as_str().unwrap())).0, 404);
    }
}
