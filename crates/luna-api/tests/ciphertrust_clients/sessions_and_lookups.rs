//! CipherTrust clients' sign-in and refresh, domains, lookups by name, STC partitions, HSM servers and connection tests.

use super::*;

#[test]
fn the_terraform_provider_signs_in_and_refreshes_as_it_does_against_ciphertrust_manager() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    let sign_in = json!({"username": "admin", "password": ADMIN_PASSWORD, "domain": ""});
    let (status, answer) = login(&api, &sign_in);
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.to_string().contains("codeDesc"), "{answer}");
    let jwt = answer["jwt"].as_str().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        expiry(jwt) > now + 60,
        "the provider refreshes a minute before exp"
    );
    assert_eq!(api.call("GET", "/cckm/hsm/luna/keys", Some(jwt), None).0, 200);

    // Older provider versions add an empty auth_domain.
    let older = json!({"username": "admin", "password": ADMIN_PASSWORD, "auth_domain": "", "domain": ""});
    assert_eq!(login(&api, &older).0, 200);

    let refresh = json!({
        "username": "", "password": "", "domain": "",
        "grant_type": "refresh_token",
        "refresh_token": answer["refresh_token"],
        "renew_refresh_token": true
    });
    let (status, renewed) = login(&api, &refresh);
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["refresh_token"], answer["refresh_token"]);
    assert_eq!(
        api.call("GET", "/cckm/hsm/luna/keys", renewed["jwt"].as_str(), None)
            .0,
        200
    );
    // A refresh token is used once; the provider then falls back to its password.
    let (status, body) = login(&api, &refresh);
    assert_error(status, &body, 401, 1);

    // Without grant_type a wrong password is still a 401 (and throttled as one).
    let (status, body) = login(
        &api,
        &json!({"username": "admin", "password": "wrong", "domain": ""}),
    );
    assert_error(status, &body, 401, 1);
}

#[test]
fn the_root_domain_is_accepted_by_name_and_any_other_domain_is_refused() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    for accepted in [
        json!({"username": "admin", "password": ADMIN_PASSWORD, "domain": "root"}),
        json!({"username": "admin", "password": ADMIN_PASSWORD, "auth_domain": "root", "domain": "root"}),
        // The PowerShell module's shape: grant_type, and labels for the token.
        json!({"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD, "domain": "", "labels": ["lunactl"]}),
    ] {
        let (status, answer) = login(&api, &accepted);
        assert_eq!(status, 200, "{accepted}: {answer}");
    }
    for (refused, says) in [
        (
            json!({"username": "admin", "password": ADMIN_PASSWORD, "domain": "tenant-a"}),
            "luna-cckm has one domain",
        ),
        (
            json!({"username": "admin", "password": ADMIN_PASSWORD, "auth_domain": "tenant-a", "domain": ""}),
            "auth_domain \"tenant-a\"",
        ),
        (
            json!({"username": "admin", "password": ADMIN_PASSWORD, "domain": "", "auth_domain_path": "/acme"}),
            "auth_domain_path",
        ),
        (
            json!({"username": "admin", "password": ADMIN_PASSWORD, "grant_type": "client_credential"}),
            "grant_type must be",
        ),
        (
            json!({"username": "", "password": ADMIN_PASSWORD, "domain": ""}),
            "username is required",
        ),
    ] {
        let (status, body) = login(&api, &refused);
        assert_error(status, &body, 400, 15);
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{refused}: {body}"
        );
    }
}

/// How the clients find a resource: the Ansible collection and the
/// PowerShell module ask a list for one name (`<list>/?skip=0&limit=1&name=X`,
/// with a slash before the query), the Terraform provider's data sources
/// for every record (`limit=-1`); all read `total` and `resources`.
#[test]
fn lookups_by_name_with_a_slash_and_lists_of_everything_answer_as_ciphertrust_does() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    api.partition("lookup-a", 1);
    api.partition("lookup-b", 1);
    const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";
    let (status, all) = api.get(&format!("{CONNECTIONS}/?skip=0&limit=-1"));
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 2, "{all}");
    assert_eq!(all["resources"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["limit"], 1000, "-1 is the largest page: {all}");
    let name = all["resources"][1]["name"].as_str().unwrap();
    let (status, one) = api.get(&format!("{CONNECTIONS}/?skip=0&limit=1&name={name}"));
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        (one["total"].as_i64(), one["resources"][0]["name"].as_str()),
        (Some(1), Some(name)),
        "{one}"
    );
    assert!(one["resources"][0]["id"].is_string(), "{one}");
    let (status, none) = api.get(&format!("{CONNECTIONS}/?skip=0&limit=1&name=no-such-connection"));
    assert_eq!((status, none["total"].as_i64()), (200, Some(0)), "{none}");
    for listed in [&all, &one, &none] {
        assert!(
            !listed.to_string().contains("codeDesc"),
            "Ansible raises on it: {listed}"
        );
    }
    let (status, body) = api.get(&format!("{CONNECTIONS}/?limit=-2"));
    assert_error(status, &body, 400, 15);
}

/// Luna's STC partitions need a real Luna's secure trusted channel: every
/// route of them answers 501 with the error body, saying what is missing
/// and what to use instead (after the token check, as every route).
#[test]
fn stc_partitions_are_a_clear_501() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    const STC: &str = "/connectionmgmt/services/luna-network/stc-partitions";
    let id = "/00000000-0000-0000-0000-000000000000";
    for (method, path, body) in [
        ("GET", format!("{STC}/?skip=0&limit=10"), None),
        (
            "POST",
            STC.to_owned(),
            Some(json!({"name": "stc", "partition_identity": "x"}).to_string()),
        ),
        ("GET", format!("{STC}{id}"), None),
        ("DELETE", format!("{STC}{id}"), None),
    ] {
        assert_eq!(
            api.call(method, &path, None, body.as_deref()).0,
            401,
            "{method} {path}"
        );
        let (status, answer) = api.call(method, &path, Some(&api.token), body.as_deref());
        assert_eq!(status, 501, "{method} {path}: {answer}");
        assert_eq!(answer["code"], 15, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("secure trusted channel") && message.contains("luna-network/connections"),
            "{message}"
        );
        assert!(
            answer["codeDesc"]
                .as_str()
                .unwrap()
                .starts_with("NCERRNotImplemented: "),
            "{answer}"
        );
    }
}

/// Every client registers the HSM first. The PowerShell module's
/// `New-CMLunaHSMServer` (CipherTrustManager-ConnectionMgr-LunaHSMServer.psm1)
/// posts `hostname`, `description`, `hsm_certificate`, `products` and
/// `meta`, and finds servers with `?host=`; Terraform then names the server
/// in its connection (`server_id`). A server a connection names stays (409).
#[test]
fn hsm_servers_are_registered_found_named_by_connections_and_kept_while_named() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    const SERVERS: &str = "/connectionmgmt/services/luna-network/servers";
    let pem = hsm_certificate("192.168.100.70");
    let (status, server) = api.send(
        "POST",
        SERVERS,
        &json!({
            "hostname": "192.168.100.70",
            "description": "rack 4",
            "hsm_certificate": pem,
            "products": ["hsm_anchored_domain", "cckm"],
            "meta": {"red": "stop", "green": "go"}
        }),
    );
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    // RFC 4514 writes the last RDN first.
    assert_eq!(
        server["certificate"]["subject"], "O=Thales,CN=192.168.100.70",
        "{server}"
    );
    assert_eq!(
        server["certificate"]["sha256_fingerprint"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        (&server["products"], &server["meta"]["green"], &server["channel"]),
        (
            &json!(["hsm_anchored_domain", "cckm"]),
            &json!("go"),
            &json!("NTLS")
        )
    );
    assert!(!server.to_string().contains("codeDesc"));

    let (status, found) = api.get(&format!("{SERVERS}/?skip=0&limit=10&host=192.168.100.70"));
    assert_eq!(
        (
            status,
            found["total"].as_i64(),
            found["resources"][0]["id"].as_str()
        ),
        (200, Some(1), Some(id.as_str())),
        "{found}"
    );
    assert_eq!(
        api.get(&format!("{SERVERS}/{id}")).1["hostname"],
        "192.168.100.70"
    );

    for (body, status_code, says) in [
        (
            json!({"hostname": "192.168.100.70", "hsm_certificate": pem}),
            409,
            "registered already",
        ),
        (
            json!({"hostname": "hsm-2", "hsm_certificate": "not a certificate"}),
            400,
            "hsm_certificate is not one X.509 certificate",
        ),
        (json!({"hostname": "hsm-2"}), 400, "hsm_certificate is required"),
        (json!({"hsm_certificate": pem}), 400, "hostname is required"),
        (
            json!({"hostname": "hsm-2", "hsm_certificate": pem, "products": ["kms"]}),
            400,
            "product \"kms\" is not supported",
        ),
        (
            json!({"hostname": "hsm-2", "hsm_certificate": pem, "meta": "red:stop"}),
            400,
            "expected a map",
        ),
    ] {
        let (status, answer) = api.send("POST", SERVERS, &body);
        assert_eq!(status, status_code, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }

    // A connection names the server; while it does, the server stays.
    let label = luna_pkcs11::testing::fresh_token_label("on-server");
    let (status, connection) = api.send(
        "POST",
        "/connectionmgmt/services/luna-network/connections",
        &json!({
            "name": "on-server", "password": luna_pkcs11::testing::USER_PIN, "server_id": id,
            "partitions": [{"hostname": "192.168.100.70", "partition_label": label}]
        }),
    );
    assert_eq!(status, 201, "{connection}");
    assert_eq!(connection["server_id"], id.as_str());
    let (status, answer) = api.call("DELETE", &format!("{SERVERS}/{id}"), Some(&api.token), None);
    assert_error(status, &answer, 409, 13);
    assert!(
        answer["message"].as_str().unwrap().contains("on-server"),
        "{answer}"
    );
    let (status, answer) = api.send(
        "POST",
        "/connectionmgmt/services/luna-network/connections",
        &json!({
            "name": "nowhere", "password": luna_pkcs11::testing::USER_PIN, "server_id": uuid::Uuid::new_v4(),
            "partitions": [{"hostname": "x", "partition_label": label}]
        }),
    );
    assert_error(status, &answer, 400, 15);
    let connection_id = connection["id"].as_str().unwrap();
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/connectionmgmt/services/luna-network/connections/{connection_id}"),
            Some(&api.token),
            None
        )
        .0,
        204
    );
    let (status, body) = api.raw(
        "DELETE",
        &format!("{SERVERS}/{id}"),
        Some(&format!("Bearer {}", api.token)),
        None,
        None,
    );
    assert_eq!((status, body), (204, Value::Null), "204 has no body");
    let (status, answer) = api.get(&format!("{SERVERS}/{id}"));
    assert_error(status, &answer, 404, 16);
    assert!(
        answer["codeDesc"]
            .as_str()
            .unwrap()
            .starts_with("NCERRResourceNotFound"),
        "{answer}"
    );
}

/// `POST …/connections/{id}/test` logs in to every member now and keeps the
/// outcome on the connection (`last_connection_ok`, which the PowerShell
/// module filters on); `POST …/connection-test` does the same for a body
/// that is not saved (a create's body, the name optional).
#[test]
fn connections_are_tested_member_by_member_and_the_last_outcome_is_kept_and_filterable() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";
    let labels: Vec<String> = (0..2)
        .map(|i| luna_pkcs11::testing::fresh_token_label(&format!("tested-{i}")))
        .collect();
    let members: Vec<Value> = labels
        .iter()
        .map(|l| json!({"hostname": "hsm1", "partition_label": l}))
        .collect();
    let (status, connection) = api.send(
        "POST",
        CONNECTIONS,
        &json!({
            "name": "tested", "password": luna_pkcs11::testing::USER_PIN, "partitions": [members[0]]
        }),
    );
    assert_eq!(status, 201, "{connection}");
    assert!(
        connection["last_connection_ok"].is_null(),
        "no test yet: {connection}"
    );
    let id = connection["id"].as_str().unwrap();

    let (status, tested) = api.call(
        "POST",
        &format!("{CONNECTIONS}/{id}/test"),
        Some(&api.token),
        None,
    );
    assert_eq!(status, 200, "{tested}");
    assert_eq!(
        (&tested["connection_ok"], &tested["members"][0]["ok"]),
        (&json!(true), &json!(true)),
        "{tested}"
    );
    let (_, kept) = api.get(&format!("{CONNECTIONS}/{id}"));
    assert_eq!(
        (
            &kept["last_connection_ok"],
            kept["last_connection_at"].is_string()
        ),
        (&json!(true), true),
        "{kept}"
    );
    assert_eq!(
        api.get(&format!("{CONNECTIONS}?last_connection_ok=true")).1["total"],
        1
    );

    // The token goes away: the next test says which member failed, and why.
    let away = luna_pkcs11::testing::TakenAway::take(&labels[0]);
    let (status, tested) = api.call(
        "POST",
        &format!("{CONNECTIONS}/{id}/test"),
        Some(&api.token),
        None,
    );
    assert_eq!(
        (status, &tested["connection_ok"], &tested["members"][0]["ok"]),
        (200, &json!(false), &json!(false)),
        "{tested}"
    );
    assert!(
        tested["members"][0]["error"]
            .as_str()
            .unwrap()
            .contains(&labels[0]),
        "{tested}"
    );
    let (_, kept) = api.get(&format!("{CONNECTIONS}/{id}"));
    assert!(
        kept["last_connection_error"]
            .as_str()
            .unwrap()
            .contains(&format!("{:?}", labels[0])),
        "{kept}"
    );
    assert_eq!(
        api.get(&format!("{CONNECTIONS}?last_connection_ok=false")).1["total"],
        1
    );
    // Back: a test finds it again in the same process (the module is
    // initialised again at its recovery pace, 1 s after the last try).
    away.put_back();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, tested) = api.call(
            "POST",
            &format!("{CONNECTIONS}/{id}/test"),
            Some(&api.token),
            None,
        );
        if tested["connection_ok"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token is back but the test still fails: {tested}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        api.get(&format!("{CONNECTIONS}?last_connection_ok=true")).1["total"],
        1
    );

    // A body not saved: a wrong PIN on a member, then the right one.
    let (status, tested) = api.send(
        "POST",
        "/connectionmgmt/services/luna-network/connection-test",
        &json!({
            "password": "wrong-pin", "partitions": [members[1]]
        }),
    );
    assert_eq!(status, 200, "{tested}");
    assert_eq!(
        (&tested["connection_ok"], &tested["members"][0]["ok"]),
        (&json!(false), &json!(false)),
        "{tested}"
    );
    assert!(
        tested["members"][0]["error"]
            .as_str()
            .unwrap()
            .contains("the password does not log in"),
        "{tested}"
    );
    let (status, tested) = api.send(
        "POST",
        "/connectionmgmt/services/luna-network/connection-test",
        &json!({
            "password": luna_pkcs11::testing::USER_PIN, "partitions": [members[1]]
        }),
    );
    assert_eq!(
        (status, &tested["connection_ok"]),
        (200, &json!(true)),
        "{tested}"
    );
    assert_eq!(api.get(CONNECTIONS).1["total"], 1, "nothing was saved");
    let (status, answer) = api.call(
        "POST",
        &format!("{CONNECTIONS}/{}/test", uuid::Uuid::new_v4()),
        Some(&api.token),
        None,
    );
    assert_error(status, &answer, 404, 16);
}
