//! Whole sessions of CipherTrust Manager's clients against the real binary,
//! each request shaped as the client's public code sends it (see
//! `crates/luna-api/tests/ciphertrust_clients/` for the sources), on a
//! SoftHSM2 token the operator made with `softhsm2-util`, checked on the
//! token with `pkcs11-tool`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::{call, pkcs11_objects, settled, softhsm2_operator_tokens, Server};

const USER_PIN: &str = "tf-1234";
const SO_PIN: &str = "tf-so-99";
const SERVERS: &str = "/connectionmgmt/services/luna-network/servers";
const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";

/// An operator's SoftHSM2 (its own configuration and tokens) and a server on it.
struct Operator {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    module: PathBuf,
    server: Server,
}

impl Operator {
    fn start(labels: &[&str]) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let conf = softhsm2_operator_tokens(&dir.path().join("operator-softhsm"), labels, SO_PIN, USER_PIN);
        let module = luna_pkcs11::softhsm::find_module().unwrap();
        let server = Server::launch(&dir.path().join("data"))
            .args(&["--insecure-http", "--pkcs11-module", module.to_str().unwrap()])
            .env(&[("SOFTHSM2_CONF", conf.as_path())])
            .start();
        Operator {
            _dir: dir,
            conf,
            module,
            server,
        }
    }

    fn objects(&self, label: &str) -> String {
        pkcs11_objects(
            &self.module,
            label,
            USER_PIN,
            &[("SOFTHSM2_CONF", self.conf.as_path())],
        )
    }

    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        call(method, &format!("{}{path}", self.server.base), Some(token), body)
    }

    fn admin_password(&self) -> String {
        self.server.admin_password_shown().unwrap()
    }
}

/// The HSM's server certificate as the operator exported it.
fn hsm_certificate(dir: &Path) -> String {
    let (cert, key) = (dir.join("hsm.pem"), dir.join("hsm.key"));
    luna_api::tls::ensure_self_signed(&cert, &key).unwrap();
    std::fs::read_to_string(cert).unwrap()
}

/// Terraform (ThalesGroup/terraform-provider-ciphertrust): signs in without
/// `grant_type`, refreshes with an empty username and password, registers the
/// HSM server, a connection naming it (`server_id`), adds the partition, then
/// makes a key, polls it, changes it and deletes it.
#[test]
fn a_terraform_shaped_session_runs_end_to_end() {
    let operator = Operator::start(&["tf-hsm"]);
    let base = &operator.server.base;
    let (status, signed_in) = call(
        "POST",
        &format!("{base}/auth/tokens"),
        None,
        Some(&json!({"username": "admin", "password": operator.admin_password(), "domain": ""})),
    );
    assert_eq!(status, 200, "{signed_in}");
    let (status, refreshed) = call(
        "POST",
        &format!("{base}/auth/tokens"),
        None,
        Some(
            &json!({"username": "", "password": "", "domain": "", "grant_type": "refresh_token",
                     "refresh_token": signed_in["refresh_token"], "renew_refresh_token": true}),
        ),
    );
    assert_eq!(status, 200, "{refreshed}");
    let token = refreshed["jwt"].as_str().unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let (status, server) = operator.call(
        "POST",
        SERVERS,
        token,
        Some(&json!({
            "hostname": "10.10.10.10", "hsm_certificate": hsm_certificate(scratch.path()),
            "description": "managed by terraform", "products": ["cckm"]
        })),
    );
    assert_eq!(status, 201, "{server}");
    let (status, connection) = operator.call(
        "POST",
        CONNECTIONS,
        token,
        Some(&json!({
            "name": "tf-connection", "description": "managed by terraform", "password": USER_PIN,
            "server_id": server["id"], "is_ha_enabled": false, "products": ["cckm"], "meta": {"terraform": true},
            "partitions": [{"hostname": "10.10.10.10", "partition_label": "tf-hsm"}]
        })),
    );
    assert_eq!(status, 201, "{connection}");
    assert_eq!(
        (&connection["products"], &connection["meta"]),
        (&json!(["cckm"]), &json!({"terraform": true})),
        "{connection}"
    );
    // The provider's data sources list everything.
    let (_, all) = operator.call("GET", &format!("{CONNECTIONS}/?skip=0&limit=-1"), token, None);
    assert_eq!(
        (all["total"].as_i64(), &all["resources"][0]["server_id"]),
        (Some(1), &server["id"]),
        "{all}"
    );
    let (status, partition) = operator.call(
        "POST",
        "/cckm/hsm/luna/add-partition",
        token,
        Some(&json!({"connection": "tf-connection"})),
    );
    assert_eq!(status, 201, "{partition}");

    let (status, created) = operator.call(
        "POST",
        "/cckm/hsm/luna/keys",
        token,
        Some(&json!({
            "label": "tf-key", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN",
            "attributes": ["CKA_MODIFIABLE", "CKA_ENCRYPT", "CKA_DECRYPT"]
        })),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(settled(base, token, id)["status"], "AVAILABLE");
    assert!(operator.objects("tf-hsm").contains("tf-key"));

    let (status, updated) = operator.call(
        "PATCH",
        &format!("/cckm/hsm/luna/keys/{id}"),
        token,
        Some(&json!({"attributes": [{"type": "CKA_ENCRYPT", "value": false}]})),
    );
    assert_eq!(status, 200, "{updated}");
    let key = settled(base, token, id);
    assert_eq!(
        (key["operation"].as_str(), key["operation_status"].as_str()),
        (Some("keyupdate"), Some("completed")),
        "{key}"
    );
    assert!(
        !key["attributes"]
            .as_array()
            .unwrap()
            .contains(&json!("CKA_ENCRYPT")),
        "{key}"
    );

    let (status, deleting) = operator.call("POST", &format!("/cckm/hsm/luna/{id}/delete"), token, None);
    assert_eq!(status, 200, "{deleting}");
    assert_eq!(settled(base, token, id)["status"], "DELETED");
    assert!(
        !operator.objects("tf-hsm").contains("tf-key"),
        "gone from the token"
    );
    let (status, forgotten) = operator.call("DELETE", &format!("/cckm/hsm/luna/keys/{id}"), token, None);
    assert_eq!((status, forgotten), (204, Value::Null));
    operator.server.stop();
}

/// The Ansible collection (thalesgroup.ciphertrust): `grant_type: password`,
/// lookups by name with a slash before the query, a connection's PATCH and
/// test, and an HA member added and removed; no success body holds
/// `codeDesc` (the collection raises on it).
#[test]
fn an_ansible_shaped_session_runs_end_to_end() {
    let operator = Operator::start(&["ansible-1", "ansible-2", "ansible-3"]);
    let base = &operator.server.base;
    let (status, signed_in) = call(
        "POST",
        &format!("{base}/auth/tokens"),
        None,
        Some(&json!({"grant_type": "password", "username": "admin", "password": operator.admin_password()})),
    );
    assert_eq!(status, 200, "{signed_in}");
    let token = signed_in["jwt"].as_str().unwrap();
    let mut answers = Vec::new();
    let (status, connection) = operator.call("POST", CONNECTIONS, token, Some(&json!({
        "name": "ansible-connection", "password": USER_PIN, "so_password": SO_PIN, "is_ha_enabled": true,
        "partitions": [{"hostname": "hsm1", "partition_label": "ansible-1"}, {"hostname": "hsm2", "partition_label": "ansible-2"}]
    })));
    assert_eq!(status, 201, "{connection}");
    answers.push(connection);
    let (status, found) = operator.call(
        "GET",
        &format!("{CONNECTIONS}/?skip=0&limit=1&name=ansible-connection"),
        token,
        None,
    );
    assert_eq!((status, found["total"].as_i64()), (200, Some(1)), "{found}");
    let id = found["resources"][0]["id"].as_str().unwrap().to_owned();
    answers.push(found);
    let (status, patched) = operator.call(
        "PATCH",
        &format!("{CONNECTIONS}/{id}"),
        token,
        Some(&json!({"description": "patched by ansible"})),
    );
    assert_eq!(
        (status, &patched["description"]),
        (200, &json!("patched by ansible")),
        "{patched}"
    );
    answers.push(patched);
    let (status, tested) = operator.call("POST", &format!("{CONNECTIONS}/{id}/test"), token, None);
    assert_eq!(
        (status, &tested["connection_ok"]),
        (200, &json!(true)),
        "{tested}"
    );
    answers.push(tested);
    let (status, partition) = operator.call(
        "POST",
        "/cckm/hsm/luna/add-partition",
        token,
        Some(&json!({"connection": id})),
    );
    assert_eq!(status, 201, "{partition}");
    answers.push(partition.clone());

    let (status, grown) = operator.call(
        "POST",
        &format!("{CONNECTIONS}/{id}/partitions"),
        token,
        Some(&json!({
            "hostname": "hsm3", "partition_label": "ansible-3", "so_password": SO_PIN
        })),
    );
    assert_eq!(
        (status, grown["partitions"].as_array().map(Vec::len)),
        (201, Some(3)),
        "{grown}"
    );
    let serial = grown["partitions"][2]["serial_number"]
        .as_str()
        .unwrap()
        .to_owned();
    answers.push(grown);
    let (status, created) = operator.call("POST", "/cckm/hsm/luna/keys", token, Some(&json!({
        "label": "ansible-key", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN"
    })));
    assert_eq!(status, 201, "{created}");
    let key = settled(base, token, created["id"].as_str().unwrap());
    assert_eq!(key["replication_info"][&serial], "available", "{key}");
    assert!(
        operator.objects("ansible-3").contains("ansible-key"),
        "cloned to the new member"
    );
    let (status, removed) = operator.call(
        "DELETE",
        &format!("{CONNECTIONS}/{id}/partitions/{serial}"),
        token,
        None,
    );
    assert_eq!((status, removed), (204, Value::Null));
    for answer in &answers {
        assert!(!answer.to_string().contains("codeDesc"), "{answer}");
    }
    operator.server.stop();
}
