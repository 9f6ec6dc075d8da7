//! The reference walk-through, time-ordered ids, replication, a graceful stop, and every refusal: bad input, auth, conflicts, roles.

use super::*;

on_both_backends! {
    // Keys and operations get time-ordered ids (UUID version 7): a new record
    // goes to the end of the primary key and of every index led by the id,
    // not to a random page of each. The wire still carries UUIDs, and a key's
    // objects carry its id as their CKA_ID.
    fn keys_and_operations_get_time_ordered_ids(db: TestDatabase) {
        let url = db.url.clone();
        let api = Api::start(db);
        let partition = api.partition("ordered", 1);
        let mut ids = Vec::new();
        for n in 0..3 {
            let (status, created) = api.send("POST", KEYS, &json!({"label": format!("ordered-{n}"), "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}));
            assert_eq!(status, 201, "{created}");
            let id = uuid::Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 7, "{id}");
            ids.push(id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "made in order, ordered: {ids:?}");
        let token = luna_pkcs11::testing::module()
            .open_token(partition["members"][0]["partition_label"].as_str().unwrap(), None, secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN))
            .unwrap();
        for id in &ids {
            assert_eq!(api.settled(&id.to_string())["status"], "AVAILABLE");
            assert_eq!(token.find_by_id(id.as_bytes()).unwrap().len(), 1, "its object's CKA_ID is its id");
        }
        let operations: Vec<uuid::Uuid> = luna_store::testing::select_texts(&url, "SELECT id AS value FROM operations WHERE kind = 'keycreate'")
            .unwrap()
            .iter()
            .map(|id| uuid::Uuid::parse_str(id).unwrap())
            .collect();
        assert_eq!(operations.len(), 3, "{operations:?}");
        assert!(operations.iter().all(|op| op.get_version_num() == 7), "{operations:?}");
    }

    fn the_reference_walk_through_answers_as_the_reference_does(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition_with_domain("walk", 2);
        assert_eq!(partition["members"].as_array().unwrap().len(), 2);

        // Create: in_progress, the private record with the public one under links.
        let (status, created) = api.send("POST", KEYS, &reference_create(&partition["id"]));
        assert_eq!(status, 201, "{created}");
        let example = reference("key_create");
        assert_shaped_like(&created, &example, "create");
        assert_same_values(&created, &example, &["account", "application", "devAccount", "status", "operation", "operation_status", "algorithm", "object_type", "mechanism", "size", "label", "replicated", "byok_key", "modulus", "exponent", "ha_enabled"]);
        assert_same_values(&created["links"], &example["links"], &["status", "operation", "operation_status", "mechanism", "size", "label", "modulus", "exponent", "link_id"]);
        let id = created["id"].as_str().unwrap().to_owned();
        let public_id = created["links"]["id"].as_str().unwrap().to_owned();
        assert_eq!(created["uri"], format!("kylo:kylo:cckm:luna-keys:{id}"));
        assert_eq!(created["link_id"], "", "as the reference shows, the link appears with the objects");

        // Poll to AVAILABLE: the private key, as the reference's GET shows it.
        let key = api.settled(&id);
        let example = reference("key_get");
        assert_shaped_like(&key, &example, "get");
        assert_same_values(&key, &example, &["status", "operation", "operation_status", "algorithm", "object_type", "exponent", "origin", "mechanism", "size", "label", "account", "application", "devAccount", "byok_key", "ha_enabled"]);
        assert_eq!(key["attributes"], json!(["CKA_TOKEN", "CKA_PRIVATE", "CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_EXTRACTABLE"]));
        assert_eq!(key["generated_with"], "CKM_RSA_PKCS_KEY_PAIR_GEN", "SoftHSM2 lacks X9.31: remapped");
        assert_eq!(key["modulus"].as_str().unwrap().len(), 512);
        assert_eq!(key["sha_256_fingerprint"].as_str().unwrap().len(), 64);
        assert_eq!(key["link_id"], public_id);
        let serials: Vec<&str> = partition["members"].as_array().unwrap().iter().map(|m| m["serial_number"].as_str().unwrap()).collect();
        assert_eq!(key["replication_info"][serials[0]], "available");
        assert_eq!(key["replication_info"][serials[1]], "available", "cloned to the second member");
        assert_eq!(key["replicated"], true);
        let public = api.settled(&public_id);
        assert_eq!((public["object_type"].as_str(), public["modulus"].as_str()), (Some("public key"), key["modulus"].as_str()));

        // List as the reference does.
        let (status, list) = api.get(&format!("{KEYS}?skip=0&limit=10&sort=updatedAt"));
        assert_eq!(status, 200);
        assert_shaped_like(&list, &reference("key_list"), "list");
        assert_eq!((list["skip"].as_u64(), list["limit"].as_u64(), list["total"].as_u64()), (Some(0), Some(10), Some(2)));
        let updated: Vec<&str> = list["resources"].as_array().unwrap().iter().map(|r| r["updatedAt"].as_str().unwrap()).collect();
        assert!(updated.windows(2).all(|w| w[0] <= w[1]), "sorted by updatedAt: {updated:?}");

        // PATCH CKA_SIGN: in_progress, then completed with the attribute set on the token.
        let (status, patched) = api.send("PATCH", &format!("{KEYS}/{id}"), &json!({"attributes": [{"type": "CKA_SIGN", "value": true}]}));
        assert_eq!(status, 200, "{patched}");
        assert_shaped_like(&patched, &reference("key_patch_in_progress"), "patch");
        assert_eq!((patched["operation"].as_str(), patched["operation_status"].as_str()), (Some("keyupdate"), Some("in_progress")));
        let done = api.settled(&id);
        assert_same_values(&done, &reference("key_patch_completed"), &["status", "operation", "operation_status"]);
        // The reference's examples order attributes differently from one to the next; compare as sets.
        let names = |v: &Value| v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(names(&done["attributes"]), names(&reference("key_patch_completed")["attributes"]));

        // Delete from the HSM: the objects are gone from the token, both records DELETED.
        let (status, deleting) = api.post_empty(&format!("/cckm/hsm/luna/{id}/delete"));
        assert_eq!(status, 200, "{deleting}");
        assert_same_values(&deleting, &reference("key_delete_in_progress"), &["status", "operation", "operation_status"]);
        let deleted = api.settled(&id);
        assert_same_values(&deleted, &reference("key_delete_completed"), &["status", "operation", "operation_status"]);
        assert_eq!(api.settled(&public_id)["status"], "DELETED");
        let cka_id = uuid::Uuid::parse_str(&id).unwrap();
        for member in partition["members"].as_array().unwrap() {
            let token = luna_pkcs11::testing::module()
                .open_token(member["partition_label"].as_str().unwrap(), None, secrecy::SecretString::from(luna_pkcs11::testing::USER_PIN))
                .unwrap();
            assert!(token.find_by_id(cka_id.as_bytes()).unwrap().is_empty(), "no object is left on any member");
        }

        // Delete from CCKM: 204, and both records are gone here.
        let (status, body) = api.call("DELETE", &format!("{KEYS}/{id}"), Some(&api.token), None);
        assert_eq!((status, body), (204, Value::Null));
        assert_eq!(api.get(&format!("{KEYS}/{id}")).0, 404);
        assert_eq!(api.get(&format!("{KEYS}/{public_id}")).0, 404);
    }

    fn aes_keys_replicate_at_once_on_a_single_partition_and_filters_work(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("single", 1);
        let mut ids = Vec::new();
        for size in [128, 192, 256] {
            let body = json!({"label": format!("aes-{size}"), "size": size, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT", "CKA_DECRYPT"]});
            let (status, created) = api.send("POST", KEYS, &body);
            assert_eq!(status, 201, "{created}");
            assert!(created.get("links").is_none(), "an AES key has no linked record");
            ids.push(created["id"].as_str().unwrap().to_owned());
        }
        for id in &ids {
            let key = api.settled(id);
            assert_eq!((key["status"].as_str(), key["object_type"].as_str(), key["algorithm"].as_str()), (Some("AVAILABLE"), Some("secret key"), Some("aes")));
            assert_eq!(key["replicated"], true, "one member holds it: replicated");
        }
        let (status, replicating) = api.post_empty(&format!("{KEYS}/{}/replicate", ids[0]));
        assert_eq!(status, 200, "{replicating}");
        let replicated = api.settled(&ids[0]);
        assert_eq!((replicated["operation"].as_str(), replicated["operation_status"].as_str()), (Some("keyreplicate"), Some("completed")));
        let (_, list) = api.get(&format!("{KEYS}?size=192&algorithm=aes&partition_id={}", partition["id"].as_str().unwrap()));
        assert_eq!(list["total"], 1);
        assert_eq!(list["resources"][0]["label"], "aes-192");
        let (_, list) = api.get(&format!("{KEYS}?sort=-label&limit=2"));
        assert_eq!(list["resources"].as_array().unwrap().iter().map(|k| k["label"].as_str().unwrap()).collect::<Vec<_>>(), ["aes-256", "aes-192"]);
        assert_eq!(list["total"], 3);

        // One partition's answer says what its token is and what each create does.
        let pid = partition["id"].as_str().unwrap();
        let (status, one) = api.get(&format!("/cckm/hsm/luna/partitions/{pid}"));
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["members"][0]["token"], json!({"reachable": true, "manufacturer": "SoftHSM project", "model": "SoftHSM v2", "missing_for_replication": [], "recoveries": 0}), "a token in use answers, and has not been away");
        let plan: Vec<(String, String, bool)> = one["mechanisms"].as_array().unwrap().iter()
            .map(|m| (m["mechanism"].as_str().unwrap().to_owned(), m["generated_with"].as_str().unwrap().to_owned(), m["remapped"].as_bool().unwrap()))
            .collect();
        let remapped = |m: &str| (m.to_owned(), "CKM_RSA_PKCS_KEY_PAIR_GEN".to_owned(), true);
        let itself = |m: &str| (m.to_owned(), m.to_owned(), false);
        assert_eq!(plan, [remapped("CKM_RSA_FIPS_186_3_AUX_PRIME_KEY_PAIR_GEN"), remapped("CKM_RSA_X9_31_KEY_PAIR_GEN"), remapped("CKM_RSA_FIPS_186_3_PRIME_KEY_PAIR_GEN"), itself("CKM_RSA_PKCS_KEY_PAIR_GEN"), itself("CKM_AES_KEY_GEN")]);
        let (_, listed) = api.get("/cckm/hsm/luna/partitions");
        assert!(listed["resources"][0].get("mechanisms").is_none() && listed["resources"][0]["members"][0].get("token").is_none(), "lists do not ask the tokens: {listed}");

        // Removing the partition forgets its keys here, then frees its connection.
        let cid = partition["connection_id"].as_str().unwrap();
        assert_eq!(api.get(&format!("/cckm/hsm/luna/partitions?partition_label={}", partition["partition_label"].as_str().unwrap())).1["total"], 1);
        assert_eq!(api.call("DELETE", &format!("/cckm/hsm/luna/partitions/{pid}"), Some(&api.token), None).0, 204);
        assert_eq!(api.get(&format!("/cckm/hsm/luna/partitions/{pid}")).0, 404);
        assert_eq!(api.get(KEYS).1["total"], 0);
        assert_eq!(api.call("DELETE", &format!("/connectionmgmt/services/luna-network/connections/{cid}"), Some(&api.token), None).0, 204);
        assert_eq!(api.get(&format!("/connectionmgmt/services/luna-network/connections/{cid}")).0, 404);
    }

    fn a_graceful_stop_finishes_the_token_call_in_flight(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("stop", 1);
        let body = json!({"label": "slow", "size": 4096, "partition_id": partition["id"], "mechanism": "CKM_RSA_PKCS_KEY_PAIR_GEN"});
        // Wait until a worker holds the operation (an RSA-4096 pair takes a while), then stop.
        let mut id = None;
        for _ in 0..5 {
            let (_, created) = api.send("POST", KEYS, &body);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                let running = api.store().operation_counts().unwrap().iter().any(|(s, n)| *s == luna_domain::OperationState::Running && *n > 0);
                if running {
                    id = Some(created["id"].as_str().unwrap().to_owned());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if id.is_some() {
                break;
            }
        }
        let id = uuid::Uuid::parse_str(&id.expect("a worker was seen holding a create")).unwrap();
        let db = api.stop();
        let key = db.store.get_key(id).unwrap().unwrap();
        assert_eq!(key.lifecycle().status(), luna_domain::KeyStatus::Available, "the create in flight was finished before the stop");
        assert!(db.store.operation_counts().unwrap().iter().all(|(s, _)| *s != luna_domain::OperationState::Running));
    }

    fn every_bad_input_gets_a_4xx_with_a_sentence(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("bad", 1);
        let pid = partition["id"].as_str().unwrap().to_owned();
        let body = json!({"label": "k", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE", "CKA_SENSITIVE"]});
        let (_, key) = api.send("POST", KEYS, &body);
        let kid = key["id"].as_str().unwrap().to_owned();
        api.settled(&kid);
        let with = |field: &str, value: Value| {
            let mut b = body.clone();
            b[field] = value;
            b.to_string()
        };
        let big = format!("{{\"label\": \"{}\"}}", "x".repeat(100 * 1024));
        // (method, path, body, content type, expected status, what the message says)
        type Case<'a> = (&'a str, String, Option<String>, Option<&'a str>, u16, &'a str);
        let cases: Vec<Case> = vec![
            ("POST", KEYS.into(), Some("{not json".into()), Some("application/json"), 400, "not valid"),
            ("POST", KEYS.into(), Some(with("size", json!("big"))), Some("application/json"), 400, "invalid type"),
            ("POST", KEYS.into(), Some(with("size", json!(1024))), Some("application/json"), 400, "size 1024 is not allowed for CKM_AES_KEY_GEN; allowed: 128, 192, 256"),
            ("POST", KEYS.into(), Some(with("mechanism", json!("CKM_DES_KEY_GEN"))), Some("application/json"), 400, "allowed: CKM_RSA_FIPS"),
            ("POST", KEYS.into(), Some(with("attributes", json!(["CKA_BOGUS"]))), Some("application/json"), 400, "CKA_BOGUS"),
            ("POST", KEYS.into(), Some(with("partition_id", json!("p1"))), Some("application/json"), 400, "is not a UUID"),
            ("POST", KEYS.into(), Some(with("partition_id", json!(uuid::Uuid::new_v4()))), Some("application/json"), 404, "does not exist"),
            ("POST", KEYS.into(), Some(with("colour", json!("red"))), Some("application/json"), 400, "unknown field"),
            ("POST", KEYS.into(), Some(json!({"size": 256}).to_string()), Some("application/json"), 400, "label is required"),
            ("POST", KEYS.into(), Some(body.to_string()), None, 400, "Content-Type: application/json"),
            ("POST", KEYS.into(), Some(big), Some("application/json"), 400, "larger than 64 KiB"),
            ("PATCH", format!("{KEYS}/{kid}"), Some(json!({"attributes": []}).to_string()), Some("application/json"), 400, "at least one change"),
            ("PATCH", format!("{KEYS}/{kid}"), Some(json!({"attributes": [{"type": "CKA_SIGN", "value": "yes"}]}).to_string()), Some("application/json"), 400, "invalid type"),
            ("PATCH", format!("{KEYS}/{kid}"), Some(json!({"attributes": [{"type": "CKA_SENSITIVE", "value": false}]}).to_string()), Some("application/json"), 400, "only change from false to true"),
            ("PATCH", format!("{KEYS}/{kid}"), Some(json!({"attributes": [{"type": "CKA_MODIFIABLE", "value": false}]}).to_string()), Some("application/json"), 400, "fixed when the key is created"),
            ("GET", format!("{KEYS}/not-a-uuid"), None, None, 404, "does not exist"),
            ("GET", format!("{KEYS}/{}", uuid::Uuid::new_v4()), None, None, 404, "does not exist"),
            ("POST", format!("{KEYS}/42/replicate"), None, None, 404, "does not exist"),
            ("POST", "/cckm/hsm/luna/42/delete".into(), None, None, 404, "does not exist"),
            ("DELETE", format!("{KEYS}/{}", uuid::Uuid::new_v4()), None, None, 404, "does not exist"),
            ("GET", format!("{KEYS}?limit=0"), None, None, 400, "limit must be a whole number from 1 to 1000"),
            ("GET", format!("{KEYS}?limit=abc"), None, None, 400, "limit must be"),
            ("GET", format!("{KEYS}?skip=-1"), None, None, 400, "skip must be"),
            ("GET", format!("{KEYS}?sort=colour"), None, None, 400, "sort field \"colour\" is not supported"),
            ("GET", format!("{KEYS}?status=gone"), None, None, 400, "allowed: in_progress, AVAILABLE"),
            ("GET", format!("{KEYS}?colour=red"), None, None, 400, "unknown query parameter"),
            ("GET", format!("{KEYS}?size=%FF"), None, None, 400, "size must be"),
            ("GET", "/cckm/hsm/luna/partitions/nope".into(), None, None, 404, "does not exist"),
            ("GET", "/cckm/hsm/luna/nothing-here".into(), None, None, 404, "there is no GET"),
            ("POST", "/connectionmgmt/services/luna-network/connections".into(), Some(json!({"name": "x", "password": "p", "partitions": [{"partition_label": "a"}, {"partition_label": "b"}]}).to_string()), Some("application/json"), 400, "exactly one partition"),
            ("POST", "/connectionmgmt/services/luna-network/connections".into(), Some(json!({"name": "x", "password": "p", "partitions": [{"partition_label": "no-such-token"}]}).to_string()), Some("application/json"), 400, "no token labelled"),
            ("POST", "/cckm/hsm/luna/add-partition".into(), Some(json!({"connection": "nobody"}).to_string()), Some("application/json"), 404, "no connection"),
            // The contract's sizes are numbers; a quoted one is refused, not read.
            ("POST", KEYS.into(), Some(json!({"label": "s", "size": "256", "partition_id": kid, "mechanism": "CKM_AES_KEY_GEN"}).to_string()), Some("application/json"), 400, "invalid type: string \"256\""),
            // A body is an object: serde would read a struct from an array of
            // its fields in order (a synchronize job was started from `[[], true]`).
            ("POST", "/cckm/hsm/luna/synchronize".into(), Some("[[], true]".into()), Some("application/json"), 400, "expected a map"),
            ("POST", "/cckm/hsm/luna/refresh".into(), Some("[[], true]".into()), Some("application/json"), 400, "expected a map"),
            ("POST", KEYS.into(), Some(json!(["k", 256, pid, "CKM_AES_KEY_GEN", []]).to_string()), Some("application/json"), 400, "expected a map"),
            ("POST", "/usermgmt/users".into(), Some(json!(["someone", "long-password", []]).to_string()), Some("application/json"), 400, "expected a map"),
        ];
        for (method, path, body, content_type, expected, needle) in cases {
            let auth = format!("Bearer {}", api.token);
            let (status, answer) = api.raw(method, &path, Some(&auth), body.as_deref(), content_type);
            let code = match expected { 400 => 15, 404 => 16, _ => 0 };
            assert_error(status, &answer, expected, code);
            assert!(answer["message"].as_str().unwrap().contains(needle), "{method} {path}: {answer} should say {needle:?}");
        }
        // Nothing of that harmed the key or the server.
        assert_eq!(api.get(&format!("{KEYS}/{kid}")).1["status"], "AVAILABLE");
    }

    fn every_auth_failure_is_a_401(db: TestDatabase) {
        let api = Api::start(db);
        let (status, health) = api.call("GET", "/healthz", None, None);
        assert_eq!((status, health), (200, json!({"status": "ok"})));
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let good = api.token.clone();
        let parts: Vec<&str> = good.split('.').collect();
        let claims: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
        let mut tampered_claims = claims.clone();
        tampered_claims["preferred_username"] = json!("mallory");
        let tampered = format!("{}.{}.{}", parts[0], engine.encode(tampered_claims.to_string()), parts[2]);
        let none = format!("{}.{}.", engine.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        let admin = api.store().user_by_name("admin").unwrap().unwrap();
        let session: uuid::Uuid = claims["sid"].as_str().unwrap().parse().unwrap();
        let signed = |key: &[u8], at: time::OffsetDateTime, session| luna_api::auth::Auth::new(key, 300).issue(&admin, session, at).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let wrong_key = signed(&[1; 64], now, session);
        let expired = signed(&SIGNING_KEY, now - time::Duration::seconds(301), session);
        // Signed with the server's key, but of a session that was never opened.
        let no_session = signed(&SIGNING_KEY, now, uuid::Uuid::new_v4());
        let hs512 = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512), &claims, &jsonwebtoken::EncodingKey::from_secret(&SIGNING_KEY)).unwrap();
        for (what, header) in [
            ("missing", None),
            ("not bearer", Some(format!("Basic {good}"))),
            ("garbage", Some("Bearer garbage".to_owned())),
            ("alg none", Some(format!("Bearer {none}"))),
            ("another algorithm", Some(format!("Bearer {hs512}"))),
            ("wrong key", Some(format!("Bearer {wrong_key}"))),
            ("expired", Some(format!("Bearer {expired}"))),
            ("tampered", Some(format!("Bearer {tampered}"))),
            ("of no session", Some(format!("Bearer {no_session}"))),
        ] {
            for path in [KEYS, "/cckm/hsm/luna/partitions", "/connectionmgmt/services/luna-network/connections"] {
                let (status, body) = api.raw("GET", path, header.as_deref(), None, None);
                assert_error(status, &body, 401, 1);
                assert!(!body.to_string().contains(&good), "{what}");
            }
        }
        assert_eq!(api.get(KEYS).0, 200, "the good token still works");

        // Wrong credentials say nothing about which part was wrong.
        let login = |user: &str, password: &str| api.call("POST", "/auth/tokens/", None, Some(&json!({"grant_type": "password", "username": user, "password": password}).to_string()));
        let (s1, wrong_password) = login("admin", "nope");
        let (s2, unknown_user) = login("nobody", "nope");
        assert_error(s1, &wrong_password, 401, 1);
        assert_eq!((s2, &unknown_user), (401, &wrong_password));
        let (status, body) = api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "magic"}).to_string()));
        assert_error(status, &body, 400, 15);

        // A refresh token gives a new pair, once.
        let (_, first) = login("admin", ADMIN_PASSWORD);
        assert_eq!((first["duration"].as_u64(), first["token_type"].as_str()), (Some(300), Some("Bearer")));
        let refresh = json!({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}).to_string();
        let (status, second) = api.call("POST", "/auth/tokens", None, Some(&refresh));
        assert_eq!(status, 200, "{second}");
        assert_ne!(second["refresh_token"], first["refresh_token"]);
        assert_eq!(api.call("GET", KEYS, second["jwt"].as_str(), None).0, 200);
        let (status, body) = api.call("POST", "/auth/tokens", None, Some(&refresh));
        assert_error(status, &body, 401, 1);
    }

    fn a_second_mutation_while_busy_and_taken_names_are_409s(db: TestDatabase) {
        // No workers: operations stay in progress for as long as the test needs.
        let api = Api::start_with(db, 0);
        let partition = api.partition("busy", 1);
        let (_, created) = api.send("POST", KEYS, &json!({"label": "k", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_MODIFIABLE"]}));
        let id = created["id"].as_str().unwrap();
        // The record knows its object's name from the start (a refresh meanwhile
        // must not take the object for new); the answer shows it once made.
        let record = api.store().get_key(uuid::Uuid::parse_str(id).unwrap()).unwrap().unwrap();
        assert_eq!(record.object_uid, format!("{}04", id.replace('-', "")));
        assert_eq!(created["object_uid"], "");
        for (method, path, body) in [
            ("PATCH", format!("{KEYS}/{id}"), Some(json!({"attributes": [{"type": "CKA_SIGN", "value": true}]}).to_string())),
            ("POST", format!("{KEYS}/{id}/replicate"), None),
            ("POST", format!("/cckm/hsm/luna/{id}/delete"), None),
            ("DELETE", format!("{KEYS}/{id}"), None),
        ] {
            let (status, answer) = api.call(method, &path, Some(&api.token), body.as_deref());
            assert_error(status, &answer, 409, 13);
            assert!(answer["message"].as_str().unwrap().contains("keycreate operation in progress"), "{answer}");
        }
        let (status, answer) = api.send("POST", "/cckm/hsm/luna/add-partition", &json!({"connection": partition["connection_id"]}));
        assert_error(status, &answer, 409, 13);
        let (status, answer) = api.call("DELETE", &format!("/connectionmgmt/services/luna-network/connections/{}", partition["connection_id"].as_str().unwrap()), Some(&api.token), None);
        assert_error(status, &answer, 409, 13);
        let (_, connection) = api.get(&format!("/connectionmgmt/services/luna-network/connections/{}", partition["connection_id"].as_str().unwrap()));
        assert!(connection.get("password").is_none() && !connection.to_string().contains(luna_pkcs11::testing::USER_PIN));
        let again = json!({"name": connection["name"], "password": luna_pkcs11::testing::USER_PIN, "partitions": [{"partition_label": partition["partition_label"]}]});
        let (status, answer) = api.send("POST", "/connectionmgmt/services/luna-network/connections", &again);
        assert_error(status, &answer, 409, 13);
    }

    fn every_route_admits_exactly_the_roles_it_should(db: TestDatabase) {
        let api = Api::start_with(db, 0);
        let partition = api.partition("roles", 1);
        let (_, key) = api.send("POST", KEYS, &json!({"label": "k", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}));
        assert!(key["id"].is_string(), "{key}");
        let login = |name: &str, groups: Value| {
            let (status, user) = api.send("POST", "/usermgmt/users", &json!({"username": name, "password": "password-of-a-user", "groups": groups}));
            assert_eq!(status, 201, "{user}");
            assert!(user.get("password").is_none() && user.get("password_hash").is_none());
            let (_, tokens) = api.call("POST", "/auth/tokens", None, Some(&json!({"grant_type": "password", "username": name, "password": "password-of-a-user"}).to_string()));
            tokens["jwt"].as_str().unwrap().to_owned()
        };
        let manager = login("manager", json!(["CCKM Admins"]));
        let reader = login("reader", json!(["CCKM Users"]));
        let outsider = login("outsider", json!([]));
        let nobody = uuid::Uuid::new_v4().to_string();
        use luna_api::auth::Role::{Administer, Manage, Read};
        let callers = [("admin", &api.token, [true, true, true]), ("CCKM Admins", &manager, [true, true, false]), ("CCKM Users", &reader, [true, false, false]), ("no group", &outsider, [false, false, false])];
        // Every protected operation of the document, with the role the groups
        // are named for: users, connections, the audit trail and XKS
        // keystores (whose credentials open every external key) are the admin
        // group's; reading keys, partitions and jobs every CCKM group's;
        // changing them the admin and CCKM Admins groups'.
        let doc = luna_api::server::document_json();
        let mut walked = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if !operation["security"].is_array() {
                    continue;
                }
                let path = path.strip_prefix("/api/v1").unwrap();
                // Logging out is every logged-in user's (their own sessions).
                let role = if path.starts_with("/auth/") {
                    None
                } else if ["/usermgmt/", "/connectionmgmt/", "/audit/", "/xks/"].iter().any(|p| path.starts_with(p)) {
                    Some(Administer)
                } else if method == "get" {
                    Some(Read)
                } else {
                    Some(Manage)
                };
                walked.extend(role);
                // A read names a resource that exists where its list has one;
                // a change names none, and its body is empty.
                let id = match path.strip_suffix("/{id}") {
                    Some(list) if method == "get" => api.get(list).1["resources"][0]["id"].as_str().map_or(nobody.clone(), str::to_owned),
                    _ => nobody.clone(),
                };
                let path = path.replace("{id}", &id);
                let method = method.to_uppercase();
                let body = operation["requestBody"].is_object().then_some("{}");
                // The one 5xx an operation may answer is the 501 of a route not offered, documented as such.
                let not_offered = operation["responses"].get("501").is_some();
                for (who, token, allowed) in &callers {
                    let may = role.is_none_or(|role| allowed[match role { Read => 0, Manage => 1, Administer => 2 }]);
                    let (status, answer) = api.call(&method, &path, Some(token), body);
                    if may {
                        assert!(status != 403 && status != 401 && (status < 500 || (status == 501 && not_offered)), "{who} {method} {path}: {status} {answer}");
                    } else {
                        assert_error(status, &answer, 403, 2);
                        assert!(answer["message"].as_str().unwrap().contains("may not"), "{answer}");
                    }
                }
            }
        }
        for role in [Read, Manage, Administer] {
            assert!(walked.contains(&role), "no documented operation needs {role:?}");
        }
        // Users: listed by name, found, deleted; the bootstrap admin stays; bad input says why.
        let (_, users) = api.get("/usermgmt/users?username=reader");
        assert_eq!(users["total"], 1);
        let reader_id = users["resources"][0]["user_id"].as_str().unwrap().to_owned();
        assert_eq!(api.get(&format!("/usermgmt/users/{reader_id}")).1["groups"], json!(["CCKM Users"]));
        assert_eq!(api.call("DELETE", &format!("/usermgmt/users/{reader_id}"), Some(&api.token), None).0, 204);
        let (_, admins) = api.get("/usermgmt/users?username=admin");
        let admin_id = admins["resources"][0]["user_id"].as_str().unwrap().to_owned();
        let (status, answer) = api.call("DELETE", &format!("/usermgmt/users/{admin_id}"), Some(&api.token), None);
        assert_error(status, &answer, 409, 13);
        for (body, needle) in [
            (json!({"username": "x", "password": "short"}), "at least 8"),
            (json!({"username": "x", "password": "long-enough", "groups": ["root"]}), "group \"root\" does not exist"),
            (json!({"username": "manager", "password": "long-enough"}), "already exists"),
        ] {
            let (status, answer) = api.send("POST", "/usermgmt/users", &body);
            assert!(status == 400 || status == 409, "{answer}");
            assert!(answer["message"].as_str().unwrap().contains(needle), "{answer}");
        }
    }
}
