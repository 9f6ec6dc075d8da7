//! A connection's password rotated, HA members added and removed, members held under work, a PIN refused at work.

use super::*;

/// The HSM's PIN is rotated, then the connection's: `PATCH …/connections/{id}`
/// with the new `password` is checked on every member before it is kept,
/// and the next create logs in with it. A wrong one is refused, naming the
/// member, and the old stays.
#[test]
fn a_connection_password_is_rotated_after_the_hsms_and_checked_on_every_member() {
    use secrecy::SecretString;
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";
    let partition = api.partition("rotated", 1);
    let connection_id = partition["connection_id"].as_str().unwrap().to_owned();
    let label = partition["members"][0]["partition_label"]
        .as_str()
        .unwrap()
        .to_owned();
    let create =
        json!({"label": "k", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"});
    let (_, made) = api.send("POST", "/cckm/hsm/luna/keys", &create);
    assert_eq!(api.settled(made["id"].as_str().unwrap())["status"], "AVAILABLE");

    // The operator changes the partition's PIN on the HSM.
    let raw = luna_pkcs11::testing::raw_user_session(&label);
    raw.set_pin(
        &SecretString::from(luna_pkcs11::testing::USER_PIN),
        &SecretString::from("rotated-pin-2026"),
    )
    .unwrap();
    drop(raw);

    let path = format!("{CONNECTIONS}/{connection_id}");
    let (status, answer) = api.send("PATCH", &path, &json!({"password": "not-the-new-one"}));
    assert_error(status, &answer, 400, 15);
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains(&label) && message.contains("keeps the old one"),
        "{message}"
    );
    let (status, patched) = api.send(
        "PATCH",
        &path,
        &json!({"password": "rotated-pin-2026", "description": "rotated on the 6th",
                "products": ["cckm"], "meta": {"owner": "platform"}}),
    );
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["description"], "rotated on the 6th");
    assert_eq!(
        (&patched["products"], &patched["meta"]),
        (&json!(["cckm"]), &json!({"owner": "platform"})),
        "{patched}"
    );
    assert_eq!(
        patched["last_connection_ok"], true,
        "the new PIN logged in everywhere: {patched}"
    );
    assert!(patched.get("password").is_none() && !patched.to_string().contains("rotated-pin-2026"));
    let (_, made) = api.send("POST", "/cckm/hsm/luna/keys", &create);
    let key = api.settled(made["id"].as_str().unwrap());
    assert_eq!(
        key["status"], "AVAILABLE",
        "the runner logs in with the new PIN: {key}"
    );

    for (body, says) in [
        (json!({"description": "bell\u{7}"}), "control character"),
        (json!({"password": ""}), "must not be empty"),
        (json!({"products": ["a,b"]}), "without commas"),
        (json!({"name": "renamed"}), "unknown field `name`"),
    ] {
        let (status, answer) = api.send("PATCH", &path, &body);
        assert_error(status, &answer, 400, 15);
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, answer) = api.send(
        "PATCH",
        &format!("{CONNECTIONS}/{}", uuid::Uuid::new_v4()),
        &json!({"description": "x"}),
    );
    assert_error(status, &answer, 404, 16);
}

/// The Ansible collection grows and shrinks an HA group: `POST
/// …/connections/{id}/partitions` adds a member (present, able to replicate,
/// taking the connection's PIN; the cloning domain established again with
/// `so_password`), `DELETE …/partitions/{serial}` removes one; both 409
/// while keys are in progress, and the last member stays.
#[test]
fn an_ha_connection_gains_and_loses_members_and_new_keys_reach_the_new_one() {
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";
    let partition = api.partition_with_domain("grow", 2);
    let connection = partition["connection_id"].as_str().unwrap().to_owned();
    let members = format!("{CONNECTIONS}/{connection}/partitions");
    let third = luna_pkcs11::testing::fresh_token_label("grow-2");
    let (status, grown) = api.send(
        "POST",
        &members,
        &json!({
            "hostname": "hsm3", "partition_label": third, "so_password": luna_pkcs11::testing::SO_PIN
        }),
    );
    assert_eq!(status, 201, "{grown}");
    assert_eq!(grown["partitions"].as_array().unwrap().len(), 3, "{grown}");
    let new_serial = grown["partitions"][2]["serial_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = partition["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/cckm/hsm/luna/partitions/{pid}")).1["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let (_, made) = api.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": "after-growth", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN"}),
    );
    let key = api.settled(made["id"].as_str().unwrap());
    assert_eq!(
        key["replication_info"][&new_serial], "available",
        "the new member gets new keys: {key}"
    );
    assert_eq!(key["replicated"], true, "{key}");

    for (body, status_code, says) in [
        (
            json!({"hostname": "hsm4", "partition_label": "no-such-token"}),
            400,
            "no-such-token",
        ),
        (
            json!({"hostname": "hsm4", "partition_label": third}),
            409,
            "serial number",
        ),
        (
            json!({"hostname": "hsm4"}),
            400,
            "partition_label must not be empty",
        ),
    ] {
        let (status, answer) = api.send("POST", &members, &body);
        assert_eq!(status, status_code, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }

    let (status, answer) = api.call(
        "DELETE",
        &format!("{members}/{new_serial}"),
        Some(&api.token),
        None,
    );
    assert_eq!((status, answer), (204, Value::Null));
    assert_eq!(
        api.get(&format!("/cckm/hsm/luna/partitions/{pid}")).1["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, answer) = api.call(
        "DELETE",
        &format!("{members}/{new_serial}"),
        Some(&api.token),
        None,
    );
    assert_error(status, &answer, 404, 16);
    let first_two: Vec<String> = partition["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["serial_number"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        api.call(
            "DELETE",
            &format!("{members}/{}", first_two[1]),
            Some(&api.token),
            None
        )
        .0,
        204
    );
    let (status, answer) = api.call(
        "DELETE",
        &format!("{members}/{}", first_two[0]),
        Some(&api.token),
        None,
    );
    assert_error(status, &answer, 409, 13);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("at least one partition"),
        "{answer}"
    );
}

/// While a key's operation is in progress on the partition, its members
/// stay as they are (409): the operation was planned on them.
#[test]
fn members_do_not_change_under_keys_in_progress() {
    let api = Api::start_with(luna_store::testing::TestDatabase::sqlite().unwrap(), 0);
    let partition = api.partition("busy-group", 2);
    let connection = partition["connection_id"].as_str().unwrap();
    let (status, made) = api.send("POST", "/cckm/hsm/luna/keys", &json!({"label": "pending", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}));
    assert_eq!(status, 201, "{made}");
    let members = format!("/connectionmgmt/services/luna-network/connections/{connection}/partitions");
    let serial = partition["members"][1]["serial_number"].as_str().unwrap();
    let (status, answer) = api.call("DELETE", &format!("{members}/{serial}"), Some(&api.token), None);
    assert_error(status, &answer, 409, 13);
    assert!(
        answer["message"].as_str().unwrap().contains("in progress"),
        "{answer}"
    );
    let (status, answer) = api.send(
        "POST",
        &members,
        &json!({"partition_label": luna_pkcs11::testing::fresh_token_label("busy-group-3")}),
    );
    assert_error(status, &answer, 409, 13);
}

/// The runner's own logins count too: when a member refuses the stored PIN
/// (changed on the HSM behind the service's back), the connection's
/// `last_connection_ok` turns false with the reason, which the PowerShell
/// module's filter then finds.
#[test]
fn a_pin_refused_at_work_marks_the_connection_failed() {
    use secrecy::SecretString;
    let api = Api::start(luna_store::testing::TestDatabase::sqlite().unwrap());
    const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";
    let partition = api.partition("refused-at-work", 1);
    let connection = partition["connection_id"].as_str().unwrap();
    let label = partition["members"][0]["partition_label"].as_str().unwrap();
    let raw = luna_pkcs11::testing::raw_user_session(label);
    raw.set_pin(
        &SecretString::from(luna_pkcs11::testing::USER_PIN),
        &SecretString::from("changed-behind-1"),
    )
    .unwrap();
    drop(raw);
    let (_, made) = api.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": "k", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"}),
    );
    let key = api.settled(made["id"].as_str().unwrap());
    assert_eq!(key["status"], "FAILED", "{key}");
    let (_, kept) = api.get(&format!("{CONNECTIONS}/{connection}"));
    assert_eq!(kept["last_connection_ok"], false, "{kept}");
    assert!(
        kept["last_connection_error"]
            .as_str()
            .unwrap()
            .contains("CKR_PIN_INCORRECT"),
        "{kept}"
    );
    assert_eq!(
        api.get(&format!("{CONNECTIONS}?last_connection_ok=false")).1["total"],
        1
    );
}
