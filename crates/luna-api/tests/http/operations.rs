//! Metrics, the audit trail, request ids, failed and abandoned operations, login throttling, idempotent creates, slow bodies and password resets.

use super::*;

on_both_backends! {
    fn metrics_count_requests_operations_token_calls_and_jobs(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("metrics", 1);
        let (_, made) = api.send("POST", KEYS, &json!({"label": "m", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}));
        api.settled(made["id"].as_str().unwrap());
        assert_eq!(api.get(&format!("{KEYS}/{}", uuid::Uuid::new_v4())).0, 404);
        let scrape = || ureq::get(&format!("{}/metrics", api.base.trim_end_matches("/api/v1"))).call().unwrap().into_string().unwrap();
        let text = scrape();
        let value = |prefix: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        };
        assert_eq!(value(r#"luna_http_request_duration_seconds_count{method="POST",route="/api/v1/cckm/hsm/luna/keys",status="201"}"#), 1.0);
        assert_eq!(value(r#"luna_http_request_duration_seconds_count{method="GET",route="/api/v1/cckm/hsm/luna/keys/{id}",status="404"}"#), 1.0);
        assert_eq!(value(r#"luna_operations{kind="keycreate",state="succeeded"}"#), 1.0);
        assert!(value(r#"luna_token_call_duration_seconds_count{function="generate"}"#) >= 1.0);
        assert!(text.contains("luna_http_request_duration_seconds_bucket{"), "latency histograms");
        assert!(!text.contains(made["id"].as_str().unwrap()), "no key id in metrics");
        // A failing token call is counted by function and code.
        let token = luna_pkcs11::testing::module()
            .open_token(partition["partition_label"].as_str().unwrap(), None, secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN))
            .unwrap();
        let (_, locked) = api.send("POST", KEYS, &json!({"label": "l", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}));
        let lid = locked["id"].as_str().unwrap().to_owned();
        api.settled(&lid);
        for o in token.find_by_id(uuid::Uuid::parse_str(&lid).unwrap().as_bytes()).unwrap() {
            token.destroy(o.handle).unwrap();
        }
        api.send("PATCH", &format!("{KEYS}/{lid}"), &json!({"attributes": [{"type": "CKA_SIGN", "value": true}]}));
        api.settled(&lid);
        let text = scrape();
        assert!(text.contains(r#"luna_operations{kind="keyupdate",state="failed"} 1"#), "{text}");
        // A running job's partitions are counted while it runs (here it has ended, so none).
        let job = api.send("POST", "/cckm/hsm/luna/refresh", &json!({"synchronize_all": true})).1;
        assert_eq!(job["overall_status"], "in_progress");
        assert!(scrape().contains("luna_job_partitions"), "job progress is exported");
    }

    fn the_audit_trail_records_mutations_failed_logins_and_outcomes(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("audit", 1);
        let (_, made) = api.send("POST", KEYS, &json!({"label": "a", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}));
        let id = made["id"].as_str().unwrap().to_owned();
        api.settled(&id);
        api.send("PATCH", &format!("{KEYS}/{id}"), &json!({"attributes": [{"type": "CKA_SIGN", "value": true}]}));
        api.settled(&id);
        let secret = "a-wrong-password-to-keep-out";
        let (status, _) = api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "password", "username": "mallory", "password": secret}).to_string()));
        assert_eq!(status, 401);
        let (status, trail) = api.get("/audit/records?limit=100");
        assert_eq!(status, 200, "{trail}");
        let records = trail["resources"].as_array().unwrap();
        let find = |action: &str, outcome: &str| {
            records
                .iter()
                .find(|r| r["action"].as_str().unwrap().starts_with(action) && r["outcome"].as_str().unwrap().starts_with(outcome))
                .unwrap_or_else(|| panic!("no {action} {outcome} in {trail}"))
        };
        let create = find("POST /api/v1/cckm/hsm/luna/keys", "201");
        assert_eq!(create["username"], "admin");
        assert!(uuid::Uuid::parse_str(create["request_id"].as_str().unwrap()).is_ok());
        assert_eq!(find("PATCH /api/v1/cckm/hsm/luna/keys/{id}", "200")["resource_id"], id);
        assert_eq!(find("operation keycreate", "succeeded")["resource_id"], id);
        find("operation keyupdate", "succeeded");
        assert_eq!(find("POST /api/v1/auth/tokens", "401")["username"], "mallory");
        assert!(!trail.to_string().contains(secret) && !trail.to_string().contains(&api.token));
        // Newest first, each naming the hash before it; the chain is intact.
        assert_eq!(records[0]["previous_hash"], records[1]["hash"]);
        assert_eq!(api.get("/audit/verify").1, json!({"intact": true}));
        assert_eq!(api.get("/audit/records?username=mallory").1["total"], 1);
        // Admins only.
        let (status, _) = api.send("POST", "/usermgmt/users", &json!({"username": "auditor", "password": "password-long", "groups": ["CCKM Admins"]}));
        assert_eq!(status, 201);
        let (_, tokens) = api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "password", "username": "auditor", "password": "password-long"}).to_string()));
        let (status, answer) = api.call("GET", "/audit/records", tokens["jwt"].as_str(), None);
        assert_error(status, &answer, 403, 2);
    }

    fn every_answer_carries_a_request_id(db: TestDatabase) {
        let api = Api::start_with(db, 0);
        let id_of = |request: ureq::Request| {
            let response = match request.call() {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{e}"),
            };
            (response.status(), response.header("X-Request-Id").map(str::to_owned))
        };
        let bearer = format!("Bearer {}", api.token);
        let mut seen = std::collections::HashSet::new();
        for (request, expected) in [
            (ureq::get(&format!("{}/healthz", api.base)), 200),
            (ureq::get(&format!("{}{KEYS}", api.base)).set("Authorization", &bearer), 200),
            (ureq::get(&format!("{}{KEYS}", api.base)), 401),
            (ureq::get(&format!("{}{KEYS}?limit=0", api.base)).set("Authorization", &bearer), 400),
            (ureq::get(&format!("{}/no/such/route", api.base)), 404),
        ] {
            let (status, id) = id_of(request);
            assert_eq!(status, expected);
            let id = id.expect("X-Request-Id on every answer");
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
            assert!(seen.insert(id), "ids are not reused");
        }
        // A client's own id is echoed; one that could corrupt a log line is replaced.
        let (_, echoed) = id_of(ureq::get(&format!("{}/healthz", api.base)).set("X-Request-Id", "trace-42.a_b"));
        assert_eq!(echoed.as_deref(), Some("trace-42.a_b"));
        let (_, replaced) = id_of(ureq::get(&format!("{}/healthz", api.base)).set("X-Request-Id", &"x".repeat(200)));
        assert!(uuid::Uuid::parse_str(&replaced.unwrap()).is_ok());
    }

    fn a_token_error_ends_the_operation_failed_and_the_server_stays_up(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("fail", 1);
        let (_, created) = api.send("POST", KEYS, &json!({"label": "k", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}));
        let id = created["id"].as_str().unwrap().to_owned();
        api.settled(&id);
        api.destroy_behind_the_back(&partition, &id);
        let (status, _) = api.send("PATCH", &format!("{KEYS}/{id}"), &json!({"attributes": [{"type": "CKA_SIGN", "value": true}]}));
        assert_eq!(status, 200);
        let key = api.settled(&id);
        assert_eq!((key["status"].as_str(), key["operation_status"].as_str()), (Some("AVAILABLE"), Some("failed")));
        assert!(key["operation_error"].as_str().unwrap().contains("on no partition member"), "{key}");
        assert_eq!(api.call("GET", "/healthz", None, None).0, 200);
    }

    fn an_operation_whose_workers_all_died_ends_failed_with_its_keys(db: TestDatabase) {
        // Instance A takes the create and runs nothing; every worker that
        // claims it dies (its lease runs out) until its attempts are spent.
        let a = Api::start_with(db, 0);
        let partition = a.partition("exhausted", 1);
        let (_, created) = a.send("POST", KEYS, &json!({"label": "doomed", "size": 2048, "partition_id": partition["id"], "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"}));
        let (id, public_id) = (created["id"].as_str().unwrap().to_owned(), created["links"]["id"].as_str().unwrap().to_owned());
        let mut t = luna_store::now();
        for _ in 0..luna_domain::operation::MAX_ATTEMPTS {
            assert!(a.store().claim_next_operation("dies", t, time::Duration::milliseconds(1)).unwrap().is_some());
            t += time::Duration::milliseconds(2);
        }
        // Instance B gives it up: the operation and both halves end in one write.
        let b = a.beside(luna_api::testing::runner_settings(1));
        for key_id in [&id, &public_id] {
            let key = b.settled(key_id);
            assert_eq!((key["status"].as_str(), key["operation_status"].as_str()), (Some("FAILED"), Some("failed")), "{key}");
            assert!(key["operation_error"].as_str().unwrap().contains("interrupted 5 times and was given up"), "{key}");
        }
    }

    fn failed_logins_are_throttled_per_user_and_address_never_for_good(db: TestDatabase) {
        let api = Api::start(db);
        let login = |password: &str| {
            let response = ureq::post(&format!("{}/auth/tokens", api.base))
                .send_json(json!({"grant_type": "password", "username": "admin", "password": password}));
            match response {
                Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.header("Retry-After").map(str::to_owned), r.into_json::<Value>().unwrap()),
                Err(e) => panic!("{e}"),
            }
        };
        for _ in 0..5 {
            assert_eq!(login("wrong").0, 401);
        }
        // The sixth waits, whatever the password: a guess learns nothing.
        let (status, retry_after, body) = login(luna_api::testing::ADMIN_PASSWORD);
        assert_eq!((status, retry_after.as_deref()), (429, Some("1")), "{body}");
        assert!(body["message"].as_str().unwrap().contains("too many failed logins"), "{body}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(login(luna_api::testing::ADMIN_PASSWORD).0, 200, "after the wait, the right password logs in");
        assert_eq!(login("wrong").0, 401, "and the count starts again");
    }

    fn a_create_sent_again_with_its_idempotency_key_answers_the_first_result(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("idem", 1);
        let post = |path: &str, token: &str, key: &str, body: &Value| {
            let response = ureq::post(&format!("{}{path}", api.base))
                .set("Authorization", &format!("Bearer {token}"))
                .set("Idempotency-Key", key)
                .send_json(body.clone());
            match response {
                Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.header("Idempotent-Replayed").is_some(), r.into_json::<Value>().unwrap()),
                Err(e) => panic!("{e}"),
            }
        };
        let body = json!({"label": "idem-key", "size": 2048, "partition_id": partition["id"], "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"});
        let (status, replayed, first) = post(KEYS, &api.token, "create-1", &body);
        assert_eq!((status, replayed), (201, false), "{first}");
        let (status, replayed, again) = post(KEYS, &api.token, "create-1", &body);
        assert_eq!((status, replayed), (201, true), "{again}");
        assert_eq!((&again["id"], &again["links"]["id"]), (&first["id"], &first["links"]["id"]));
        assert_eq!(api.get(&format!("{KEYS}?label=idem-key")).1["total"], 2, "one pair, not two");
        let other = json!({"label": "other", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"});
        let (status, _, refused) = post(KEYS, &api.token, "create-1", &other);
        assert_eq!(status, 409, "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("was sent before with another request"), "{refused}");
        let (status, _, bad) = post(KEYS, &api.token, "with space", &body);
        assert_eq!(status, 400, "{bad}");

        // Many at once under one new key: one key is made, every answer names it
        // (or asks to send again while the first commits).
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6).map(|_| s.spawn(|| {
                let (status, _, answer) = post(KEYS, &api.token, "create-2", &body);
                (status, answer)
            })).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids: std::collections::HashSet<&str> = answers.iter().filter(|(s, _)| *s == 201).map(|(_, a)| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1, "{answers:?}");
        assert!(answers.iter().all(|(s, a)| *s == 201 || (*s == 409 && a["message"].as_str().unwrap().contains("send it again"))), "{answers:?}");
        assert_eq!(api.get(&format!("{KEYS}?label=idem-key")).1["total"], 4, "two pairs in all");

        // A job: the same start answers the same job (not a 409 for a second one).
        let job = json!({"partitions": [partition["id"]]});
        let (status, _, started) = post("/cckm/hsm/luna/refresh", &api.token, "refresh-1", &job);
        assert_eq!(status, 201, "{started}");
        let (status, replayed, again) = post("/cckm/hsm/luna/refresh", &api.token, "refresh-1", &job);
        assert_eq!((status, replayed, &again["id"]), (201, true, &started["id"]), "{again}");
        // A connection: the same registration answers the same connection.
        let label = luna_pkcs11::testing::fresh_token_label("idem-conn");
        let connection = json!({"name": "idem-conn", "password": luna_pkcs11::testing::USER_PIN, "partitions": [{"partition_label": label}]});
        let path = "/connectionmgmt/services/luna-network/connections";
        let (status, _, made) = post(path, &api.token, "conn-1", &connection);
        assert_eq!(status, 201, "{made}");
        let (status, replayed, again) = post(path, &api.token, "conn-1", &connection);
        assert_eq!((status, replayed, &again["id"]), (201, true, &made["id"]), "{again}");
    }

    fn a_failed_operation_on_a_pair_ends_both_halves(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("pair-fail", 1);
        let (_, created) = api.send("POST", KEYS, &json!({"label": "pair", "size": 2048, "partition_id": partition["id"], "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"}));
        let id = created["id"].as_str().unwrap().to_owned();
        let public_id = created["links"]["id"].as_str().unwrap().to_owned();
        api.settled(&id);
        api.destroy_behind_the_back(&partition, &id);
        let (status, _) = api.post_empty(&format!("{KEYS}/{id}/replicate"));
        assert_eq!(status, 200);
        let key = api.settled(&id);
        assert_eq!(key["operation_status"], "failed", "{key}");
        // The public half began with the private one, so it ends with it, in
        // the same transaction: failed, with the reason, and free again.
        let (_, public) = api.get(&format!("{KEYS}/{public_id}"));
        assert_eq!(public["operation_status"], "failed", "{public}");
        assert_eq!(public["operation_error"], key["operation_error"]);
        let (status, body) = api.post_empty(&format!("/cckm/hsm/luna/{public_id}/delete"));
        assert_eq!(status, 200, "{body}");
    }
}

/// Clients that send their headers and then trickle the body (or nothing)
/// are answered 408 at the deadline and their connections closed, so they
/// cannot hold sockets and workers for ever.
#[test]
fn a_body_that_never_arrives_ends_408_and_the_connection_closes() {
    use std::io::{Read, Write};
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    let address = api
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let started = std::time::Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut socket = std::net::TcpStream::connect(&address).unwrap();
            write!(
                socket,
                "POST /api/v1/cckm/hsm/luna/keys HTTP/1.1\r\nHost: luna\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"la",
                api.token
            )
            .unwrap();
            socket
        })
        .collect();
    for socket in &mut slow {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("was not answered within 3 s"), "{answer}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= luna_api::testing::REQUEST_DEADLINE && waited < std::time::Duration::from_secs(10),
        "{waited:?}"
    );
    // The server still answers everyone else.
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200);
}

/// A leaked password is reset by an administrator (`PATCH
/// /usermgmt/users/{id}`, CipherTrust's shape): the old password stops
/// working, and every refresh token the user held is revoked at once.
#[test]
fn an_administrator_resets_a_password_and_the_users_refresh_tokens_are_revoked() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    let (status, user) = api.send(
        "POST",
        "/usermgmt/users",
        &json!({"username": "leaky", "password": "old-password-1", "groups": ["CCKM Users"]}),
    );
    assert_eq!(status, 201, "{user}");
    let id = user["user_id"].as_str().unwrap();
    let login = |password: &str| {
        api.call(
            "POST",
            "/auth/tokens",
            None,
            Some(&json!({"grant_type": "password", "username": "leaky", "password": password}).to_string()),
        )
    };
    let (_, before) = login("old-password-1");
    let refresh = before["refresh_token"].as_str().unwrap().to_owned();

    let (status, answer) = api.call(
        "PATCH",
        &format!("/usermgmt/users/{id}"),
        before["jwt"].as_str(),
        Some(&json!({"password": "by-themselves-9"}).to_string()),
    );
    assert_error(status, &answer, 403, 2);
    let (status, reset) = api.send(
        "PATCH",
        &format!("/usermgmt/users/{id}"),
        &json!({"password": "new-password-2"}),
    );
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset["username"], "leaky");
    assert!(!reset.to_string().contains("new-password-2"));
    assert_error(login("old-password-1").0, &login("old-password-1").1, 401, 1);
    assert_eq!(login("new-password-2").0, 200);
    let (status, answer) = api.call(
        "POST",
        "/auth/tokens",
        None,
        Some(&json!({"grant_type": "refresh_token", "refresh_token": refresh}).to_string()),
    );
    assert_error(status, &answer, 401, 1);

    for (path, body, status_code, code) in [
        (
            format!("/usermgmt/users/{id}"),
            json!({"password": "short"}),
            400,
            15,
        ),
        (
            format!("/usermgmt/users/{id}"),
            json!({"username": "renamed"}),
            400,
            15,
        ),
        (
            format!("/usermgmt/users/{}", uuid::Uuid::new_v4()),
            json!({"password": "long-enough-3"}),
            404,
            16,
        ),
    ] {
        let (status, answer) = api.send("PATCH", &path, &body);
        assert_error(status, &answer, status_code, code);
    }
}
