//! `luna-server serve --pkcs11-module …` on tokens the operator made with the
//! module's own tools, outside the data directory: SoftHSM2 tokens from
//! `softhsm2-util` under the operator's `SOFTHSM2_CONF`, and openCryptoki
//! soft tokens from `pkcs11-tool`. `pkcs11-tool` checks the tokens each time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use luna_api::testing::{xks_metadata, Signer, XksCaller};
use serde_json::{json, Value};
use support::{call, login, pkcs11_objects, run, settled, softhsm2_operator_tokens, Server};

const USER_PIN: &str = "op-1234";
const SO_PIN: &str = "op-so-99";

fn post(base: &str, token: &str, path: &str, body: &Value) -> (u16, Value) {
    call("POST", &format!("{base}{path}"), Some(token), Some(body))
}

const CONNECTIONS: &str = "/connectionmgmt/services/luna-network/connections";

#[test]
fn softhsm2_tokens_made_with_softhsm2_util_outside_the_data_dir_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The operator's own SoftHSM2 configuration and token directory.
    let conf = softhsm2_operator_tokens(
        &dir.path().join("operator-softhsm"),
        &["ha1", "ha2"],
        SO_PIN,
        USER_PIN,
    );
    let env = [("SOFTHSM2_CONF", conf.as_path())];
    let module = luna_pkcs11::softhsm::find_module().unwrap();
    let server = Server::launch(&data)
        .args(&["--insecure-http", "--pkcs11-module", module.to_str().unwrap()])
        .env(&env)
        .start();
    let banner = server.banner.join("\n");
    let canonical = module.canonicalize().unwrap();
    assert!(
        banner.contains(&format!("PKCS#11 module: {}", canonical.display())),
        "{banner}"
    );
    for label in ["ha1", "ha2"] {
        assert!(banner.contains(&format!("  {label}  serial ")), "{banner}");
    }
    assert!(
        !banner.contains("demo-"),
        "no demo tokens beside the operator's: {banner}"
    );
    assert!(
        !data.join("softhsm").exists(),
        "the data directory holds no tokens"
    );

    let base = &server.base;
    let token = login(base, &server.admin_password_shown().unwrap());
    let (status, connection) = post(
        base,
        &token,
        CONNECTIONS,
        &json!({"name": "operator-ha", "password": USER_PIN, "so_password": SO_PIN, "is_ha_enabled": true,
                "partitions": [{"hostname": "hsm1", "partition_label": "ha1"}, {"hostname": "hsm2", "partition_label": "ha2"}]}),
    );
    assert_eq!(status, 201, "{connection}");
    let (status, partition) = post(
        base,
        &token,
        "/cckm/hsm/luna/add-partition",
        &json!({"connection": "operator-ha"}),
    );
    assert_eq!(status, 201, "{partition}");
    let (status, created) = post(
        base,
        &token,
        "/cckm/hsm/luna/keys",
        &json!({"label": "operator-key", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN",
                "attributes": ["CKA_SENSITIVE", "CKA_ENCRYPT", "CKA_DECRYPT"]}),
    );
    assert_eq!(status, 201, "{created}");
    let key = settled(base, &token, created["id"].as_str().unwrap());
    assert_eq!(key["status"], "AVAILABLE", "{key}");
    let copies = key["replication_info"].as_object().unwrap();
    assert_eq!(copies.len(), 2, "{key}");
    assert!(copies.values().all(|state| state == "available"), "{key}");
    for label in ["ha1", "ha2"] {
        let listing = pkcs11_objects(&module, label, USER_PIN, &env);
        assert!(listing.contains("operator-key"), "{label}: {listing}");
    }
    server.stop();
}

/// openCryptoki soft tokens set up with pkcs11-tool: everything the API does
/// to a single partition, each step checked on the token by pkcs11-tool.
/// Groups of them are refused (no elliptic curves, one serial number, one
/// login shared among the tokens: see docs/contract.md).
#[test]
fn opencryptoki_tokens_made_with_pkcs11_tool_are_served_end_to_end() {
    let slots = luna_pkcs11::testing::opencryptoki_slots_for_tools(2);
    let module = luna_pkcs11::testing::opencryptoki_module_path();
    let labels = ["op-ock-a", "op-ock-b"];
    for (slot, label) in slots.iter().zip(labels) {
        let slot = slot.id.to_string();
        let so_pin = luna_pkcs11::testing::OPENCRYPTOKI_SO_PIN;
        run(Command::new("pkcs11-tool").arg("--module").arg(module).args([
            "--slot",
            &slot,
            "--init-token",
            "--label",
            label,
            "--so-pin",
            so_pin,
        ]));
        run(Command::new("pkcs11-tool").arg("--module").arg(module).args([
            "--slot",
            &slot,
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            so_pin,
            "--init-pin",
            "--pin",
            USER_PIN,
        ]));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &["--insecure-http", "--pkcs11-module", module.to_str().unwrap()],
    );
    let banner = server.banner.join("\n");
    for label in labels {
        // The clock it claims is not a time: named, and the token still served.
        assert!(
            banner.contains(&format!(
                "  {label}  serial 123  (IBM Corp. IBM SoftTok); unreadable: utcTime"
            )),
            "{banner}"
        );
    }
    let base = &server.base;
    let token = login(base, &server.admin_password_shown().unwrap());

    // A group is refused before its PIN is tried: its members cannot be told
    // apart (and could not replicate; see tests/registry.rs).
    let (status, refused) = post(
        base,
        &token,
        CONNECTIONS,
        &json!({"name": "ock-ha", "password": USER_PIN, "is_ha_enabled": true,
                "partitions": [{"partition_label": labels[0]}, {"partition_label": labels[1]}]}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("both report serial number \"123\""),
        "{refused}"
    );

    let (status, connection) = post(
        base,
        &token,
        CONNECTIONS,
        &json!({"name": "ock-a", "password": USER_PIN, "is_ha_enabled": false, "partitions": [{"partition_label": labels[0]}]}),
    );
    assert_eq!(status, 201, "{connection}");
    assert_eq!(
        connection["partitions"][0]["serial_number"], "123",
        "{connection}"
    );
    let (status, partition) = post(
        base,
        &token,
        "/cckm/hsm/luna/add-partition",
        &json!({"connection": "ock-a"}),
    );
    assert_eq!(status, 201, "{partition}");
    let pid = partition["id"].as_str().unwrap().to_owned();
    let (status, described) = call(
        "GET",
        &format!("{base}/cckm/hsm/luna/partitions/{pid}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{described}");
    assert_eq!(
        described["members"][0]["token"]["model"], "IBM SoftTok",
        "{described}"
    );
    assert_eq!(
        described["members"][0]["token"]["missing_for_replication"],
        json!(["CKM_EC_KEY_PAIR_GEN", "CKM_ECDH1_DERIVE", "CKM_AES_KEY_WRAP_PAD"])
    );
    let x931 = described["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mechanism"] == "CKM_RSA_X9_31_KEY_PAIR_GEN")
        .unwrap();
    assert_eq!(
        (x931["generated_with"].as_str(), x931["remapped"].as_bool()),
        (Some("CKM_RSA_PKCS_KEY_PAIR_GEN"), Some(true))
    );

    // Create an AES key and an RSA pair (X9.31 remapped), and find them on the token.
    let create = |body: Value| {
        let (status, created) = post(base, &token, "/cckm/hsm/luna/keys", &body);
        assert_eq!(status, 201, "{created}");
        settled(base, &token, created["id"].as_str().unwrap())
    };
    let aes = create(
        json!({"label": "ock-aes", "size": 256, "partition_id": pid, "mechanism": "CKM_AES_KEY_GEN",
                            "attributes": ["CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_ENCRYPT"]}),
    );
    let rsa = create(
        json!({"label": "ock-rsa", "size": 2048, "partition_id": pid, "mechanism": "CKM_RSA_X9_31_KEY_PAIR_GEN",
                            "attributes": ["CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_SIGN", "CKA_VERIFY"]}),
    );
    for key in [&aes, &rsa] {
        assert_eq!(
            (key["status"].as_str(), key["operation_status"].as_str()),
            (Some("AVAILABLE"), Some("created")),
            "{key}"
        );
        assert_eq!(key["replication_info"], json!({"123": "available"}), "{key}");
    }
    assert_eq!(rsa["generated_with"], "CKM_RSA_PKCS_KEY_PAIR_GEN", "{rsa}");
    assert_eq!(rsa["modulus"].as_str().unwrap().len(), 512, "{rsa}");
    let listing = pkcs11_objects(module, labels[0], USER_PIN, &[]);
    assert!(
        listing.contains("ock-aes") && listing.contains("AES length 32"),
        "{listing}"
    );
    assert_eq!(
        listing.matches("ock-rsa").count(),
        2,
        "a private and a public key: {listing}"
    );

    // Get and list.
    let aes_id = aes["id"].as_str().unwrap();
    let (status, got) = call(
        "GET",
        &format!("{base}/cckm/hsm/luna/keys/{aes_id}"),
        Some(&token),
        None,
    );
    assert_eq!((status, &got["label"]), (200, &json!("ock-aes")));
    let (_, listed) = call(
        "GET",
        &format!("{base}/cckm/hsm/luna/keys?partition_id={pid}&algorithm=rsa"),
        Some(&token),
        None,
    );
    assert_eq!(listed["total"], 2, "{listed}");

    // PATCH: the token takes CKA_DECRYPT on the AES key (pkcs11-tool shows a
    // secret key's encrypt, decrypt, wrap and unwrap, not its sign).
    let aes_usage = || {
        let listing = pkcs11_objects(module, labels[0], USER_PIN, &[]);
        // The AES key's entry alone: from its header to the next object's.
        let entry = listing
            .split("Secret Key Object")
            .nth(1)
            .and_then(|rest| rest.split(" Object;").next())
            .unwrap_or_default()
            .to_owned();
        assert!(entry.contains("ock-aes"), "{listing}");
        entry
    };
    assert!(!aes_usage().contains("decrypt"), "not yet");
    let (status, patched) = call(
        "PATCH",
        &format!("{base}/cckm/hsm/luna/keys/{aes_id}"),
        Some(&token),
        Some(&json!({"attributes": [{"type": "CKA_DECRYPT", "value": true}]})),
    );
    assert_eq!(status, 200, "{patched}");
    let patched = settled(base, &token, aes_id);
    assert_eq!(patched["operation_status"], "completed", "{patched}");
    assert!(
        patched["attributes"]
            .as_array()
            .unwrap()
            .contains(&json!("CKA_DECRYPT")),
        "{patched}"
    );
    assert!(aes_usage().contains("encrypt, decrypt"), "{}", aes_usage());

    // As an XKS proxy's external key: described, but openCryptoki 3.8's soft
    // token has no AES-GCM, which the spec's unsupported operation says to
    // curl and to botocore alike.
    let (status, keystore) = post(
        base,
        &token,
        "/xks/keystores",
        &json!({"name": "ock", "uri_path_prefix": "ock", "region": "us-east-1", "partition_id": pid}),
    );
    assert_eq!(status, 201, "{keystore}");
    let caller = XksCaller::of(base.trim_end_matches("/api/v1"), &keystore);
    for signer in [Signer::Curl, Signer::Botocore] {
        let (status, described) = caller.call(
            signer,
            &format!("keys/{aes_id}/metadata"),
            &json!({"requestMetadata": xks_metadata("DescribeKey")}),
        );
        assert_eq!(
            (status, &described["keyUsage"]),
            (200, &json!(["ENCRYPT", "DECRYPT"])),
            "{described}"
        );
        let (status, refused) = caller.call(
            signer,
            &format!("keys/{aes_id}/encrypt"),
            &json!({"requestMetadata": xks_metadata("Encrypt"), "plaintext": "cGxhaW50ZXh0", "encryptionAlgorithm": "AES_GCM"}),
        );
        assert_eq!(
            (status, refused["errorName"].as_str()),
            (501, Some("UnsupportedOperationException")),
            "{refused}"
        );
        assert!(
            refused["errorMessage"].as_str().unwrap().contains("CKM_AES_GCM"),
            "{refused}"
        );
    }

    // A key made outside the service is found by a refresh.
    run(Command::new("pkcs11-tool").arg("--module").arg(module).args([
        "--token-label",
        labels[0],
        "--login",
        "--pin",
        USER_PIN,
        "--keygen",
        "--key-type",
        "AES:16",
        "--label",
        "made-outside",
        "--id",
        "0a0b0c",
    ]));
    let (status, job) = post(
        base,
        &token,
        "/cckm/hsm/luna/refresh",
        &json!({"partitions": [pid]}),
    );
    assert_eq!(status, 201, "{job}");
    let job_url = format!("{base}/cckm/hsm/luna/refresh/{}", job["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (_, job) = call("GET", &job_url, Some(&token), None);
        if job["overall_status"] != "in_progress" || Instant::now() > deadline {
            break job;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["overall_status"], "completed", "{job}");
    let (_, found) = call(
        "GET",
        &format!("{base}/cckm/hsm/luna/keys?label=made-outside"),
        Some(&token),
        None,
    );
    assert_eq!(found["total"], 1, "{found}");
    let outside = &found["resources"][0];
    assert_eq!(
        (outside["origin"].as_str(), outside["size"].as_u64()),
        (Some("external"), Some(128)),
        "{outside}"
    );

    // Delete from the HSM: both halves of the pair end DELETED, and are gone from the token.
    let rsa_id = rsa["id"].as_str().unwrap();
    let (status, deleting) = call(
        "POST",
        &format!("{base}/cckm/hsm/luna/{rsa_id}/delete"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{deleting}");
    let deleted = settled(base, &token, rsa_id);
    assert_eq!(deleted["status"], "DELETED", "{deleted}");
    let public = settled(base, &token, deleted["link_id"].as_str().unwrap());
    assert_eq!(public["status"], "DELETED", "{public}");
    let listing = pkcs11_objects(module, labels[0], USER_PIN, &[]);
    assert!(!listing.contains("ock-rsa"), "{listing}");
    assert!(
        listing.contains("ock-aes") && listing.contains("made-outside"),
        "{listing}"
    );

    // A second of its tokens cannot be used while the first is: the module
    // keeps one login for all of them, so the PIN cannot be proven.
    let (status, refused) = post(
        base,
        &token,
        CONNECTIONS,
        &json!({"name": "ock-b", "password": USER_PIN, "is_ha_enabled": false, "partitions": [{"partition_label": labels[1]}]}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("shares one login among its tokens"),
        "{refused}"
    );
    server.stop();
}
