//! The AWS KMS external key store proxy over HTTP, on SoftHSM2 tokens and
//! SQLite or PostgreSQL, signed by signers that are not this project's:
//! Debian's curl (`--aws-sigv4`) and botocore's `SigV4Auth`. Keystores are
//! the admin's, their secret shown once and rotated without a call refused;
//! every call and error the spec lists is answered as it says, audited and
//! counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use luna_api::on_both_backends;
use luna_api::testing::{assert_error, xks_metadata, Api, Signer, XksCaller};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEYS: &str = "/cckm/hsm/luna/keys";
const KEYSTORES: &str = "/xks/keystores";

fn root(api: &Api) -> String {
    api.base.trim_end_matches("/api/v1").to_owned()
}

/// An AVAILABLE key of `partition` made with `attributes`.
fn key(api: &Api, partition: &Value, mechanism: &str, size: u32, attributes: &[&str]) -> String {
    let (status, made) = api.send(
        "POST",
        KEYS,
        &json!({"label": format!("xks-{}", uuid::Uuid::new_v4().simple()), "size": size,
                "partition_id": partition["id"], "mechanism": mechanism, "attributes": attributes}),
    );
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(api.settled(&id)["status"], "AVAILABLE");
    id
}

fn keystore(api: &Api, prefix: &str, partition: &Value) -> Value {
    let (status, made) = api.send(
        "POST",
        KEYSTORES,
        &json!({"name": format!("ks-{prefix}"), "uri_path_prefix": prefix, "region": "us-east-1", "partition_id": partition["id"]}),
    );
    assert_eq!(status, 201, "{made}");
    made
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    STANDARD.decode(value.as_str().unwrap()).unwrap()
}

fn health() -> Value {
    json!({"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": uuid::Uuid::new_v4().to_string()}})
}

fn metadata_call() -> Value {
    json!({"requestMetadata": xks_metadata("DescribeKey")})
}

fn encrypt(plaintext: &[u8], aad: Option<&[u8]>, integrity: bool) -> Value {
    let mut body = json!({"requestMetadata": xks_metadata("Encrypt"), "plaintext": b64(plaintext), "encryptionAlgorithm": "AES_GCM"});
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = b64(aad).into();
    }
    if integrity {
        body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256".into();
    }
    body
}

/// The Decrypt of what `encrypted` answered, with `aad`.
fn decrypt(encrypted: &Value, aad: Option<&[u8]>) -> Value {
    let mut body = json!({
        "requestMetadata": xks_metadata("Decrypt"),
        "ciphertext": encrypted["ciphertext"], "ciphertextMetadata": encrypted["ciphertextMetadata"],
        "initializationVector": encrypted["initializationVector"], "authenticationTag": encrypted["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = b64(aad).into();
    }
    body
}

fn assert_xks_error(answer: &(u16, Value), status: u16, name: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["errorName"], name, "{}", answer.1);
    let message = answer.1["errorMessage"].as_str().unwrap();
    assert!(
        !message.is_empty() && message.len() < 512 && message.chars().all(|c| (' '..='~').contains(&c)),
        "{message}"
    );
}

/// The base64 field `field` of `body` with its first byte flipped.
fn tampered(body: &Value, field: &str) -> Value {
    let mut bytes = unb64(&body[field]);
    bytes[0] ^= 1;
    let mut body = body.clone();
    body[field] = b64(&bytes).into();
    body
}

on_both_backends! {
    fn keystores_are_made_by_admins_their_secret_shown_once_and_rotated_without_a_refused_call(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("xks-admin", 1);
        let aes = key(&api, &partition, "CKM_AES_KEY_GEN", 256, &["CKA_ENCRYPT", "CKA_DECRYPT"]);
        let made = keystore(&api, "tenant-a/xks", &partition);
        let id = made["id"].as_str().unwrap().to_owned();
        assert_eq!(made["uri_path"], "/tenant-a/xks/kms/xks/v1");
        let first = made["new_credential"].clone();
        let secret = first["secret_access_key"].as_str().unwrap().to_owned();
        assert_eq!((first["access_key_id"].as_str().unwrap().len(), secret.len()), (24, 48), "{first}");

        // The secret is never shown again, nor written to the trail.
        let (status, read) = api.get(&format!("{KEYSTORES}/{id}"));
        assert_eq!(status, 200, "{read}");
        assert!(read.get("new_credential").is_none() && !read.to_string().contains(&secret), "{read}");
        assert_eq!(read["credentials"][0]["valid"], true, "{read}");
        let (_, listed) = api.get(KEYSTORES);
        assert_eq!(listed["total"], 1, "{listed}");
        assert!(!listed.to_string().contains(&secret));
        let (_, trail) = api.get("/audit/records?limit=100");
        assert!(trail.to_string().contains("POST /api/v1/xks/keystores") && !trail.to_string().contains(&secret), "{trail}");

        // Bad fields are sentences; taken ones conflicts; unknown partitions 404s.
        for (body, says) in [
            (json!({"name": "b", "uri_path_prefix": "a.b", "region": "us-east-1", "partition_id": partition["id"]}), "uri_path_prefix"),
            (json!({"name": "b", "uri_path_prefix": "b", "region": "US EAST", "partition_id": partition["id"]}), "region"),
            (json!({"name": "b", "uri_path_prefix": "b", "region": "us-east-1"}), "partition_id"),
            (json!({"name": "b", "uri_path_prefix": "b", "region": "us-east-1", "partition_id": partition["id"], "secret": "x"}), "unknown field"),
        ] {
            let (status, refused) = api.send("POST", KEYSTORES, &body);
            assert_error(status, &refused, 400, 15);
            assert!(refused["message"].as_str().unwrap().contains(says), "{refused}");
        }
        let (status, taken) = api.send("POST", KEYSTORES, &json!({"name": "other", "uri_path_prefix": "/tenant-a/xks/", "region": "us-east-1", "partition_id": partition["id"]}));
        assert_eq!(status, 409, "a prefix is the same with or without its slashes: {taken}");
        let (status, unknown) = api.send("POST", KEYSTORES, &json!({"name": "other", "uri_path_prefix": "c", "region": "us-east-1", "partition_id": uuid::Uuid::new_v4()}));
        assert_eq!(status, 404, "{unknown}");
        let (status, long) = api.send("POST", &format!("{KEYSTORES}/{id}/credentials"), &json!({"overlap_hours": 721}));
        assert_error(status, &long, 400, 15);

        // A rotation: the old credential and the new are both taken for the
        // overlap; the next rotation (no overlap) ends the oldest at once.
        let caller = XksCaller::of(&root(&api), &made);
        let call = |caller: &XksCaller| caller.call(Signer::Curl, &format!("keys/{aes}/metadata"), &metadata_call());
        assert_eq!(call(&caller).0, 200);
        let (status, rotated) = api.send("POST", &format!("{KEYSTORES}/{id}/credentials"), &json!({}));
        assert_eq!(status, 201, "{rotated}");
        let second = XksCaller::of(&root(&api), &rotated);
        assert_ne!(second.access_key_id, caller.access_key_id);
        assert_eq!(rotated["credentials"].as_array().unwrap().len(), 2, "{rotated}");
        assert!(rotated["credentials"][0]["expires_at"].is_string() && rotated["credentials"][1]["expires_at"].is_null(), "{rotated}");
        assert_eq!((call(&caller).0, call(&second).0), (200, 200));
        let (_, again) = api.send("POST", &format!("{KEYSTORES}/{id}/credentials"), &json!({}));
        let third = XksCaller::of(&root(&api), &again);
        assert_xks_error(&call(&caller), 401, "AuthenticationFailedException");
        assert_eq!((call(&second).0, call(&third).0), (200, 200));
        let valid = |answer: &Value| answer["credentials"].as_array().unwrap().iter().filter(|c| c["valid"] == true).count();
        assert_eq!(valid(&again), 2, "two at most are valid: {again}");
        // No overlap: only the new one is taken from now.
        let (_, at_once) = api.send("POST", &format!("{KEYSTORES}/{id}/credentials"), &json!({"overlap_hours": 0}));
        let fourth = XksCaller::of(&root(&api), &at_once);
        assert_eq!((call(&third).0, call(&fourth).0), (401, 200));
        assert_eq!(valid(&at_once), 1, "{at_once}");

        // Deleted: its path serves nothing; the partition's keys stay.
        assert_eq!(api.call("DELETE", &format!("{KEYSTORES}/{id}"), Some(&api.token), None).0, 204);
        assert_xks_error(&call(&fourth), 404, "InvalidUriPathException");
        assert_eq!(api.get(&format!("{KEYS}/{aes}")).1["status"], "AVAILABLE");
        assert_eq!(api.get(&format!("{KEYSTORES}/{id}")).0, 404);
    }

    fn every_call_and_error_the_spec_lists_is_answered_as_it_says_to_curl_and_botocore(db: TestDatabase) {
        let api = Api::start(db);
        let partition = api.partition("xks-calls", 1);
        let other = api.partition("xks-other", 1);
        let both = key(&api, &partition, "CKM_AES_KEY_GEN", 256, &["CKA_ENCRYPT", "CKA_DECRYPT"]);
        let encrypt_only = key(&api, &partition, "CKM_AES_KEY_GEN", 256, &["CKA_ENCRYPT"]);
        let decrypt_only = key(&api, &partition, "CKM_AES_KEY_GEN", 256, &["CKA_DECRYPT"]);
        let impotent = key(&api, &partition, "CKM_AES_KEY_GEN", 256, &[]);
        let aes_128 = key(&api, &partition, "CKM_AES_KEY_GEN", 128, &["CKA_ENCRYPT", "CKA_DECRYPT"]);
        let elsewhere = key(&api, &other, "CKM_AES_KEY_GEN", 256, &["CKA_ENCRYPT", "CKA_DECRYPT"]);
        let made = keystore(&api, "calls", &partition);
        let caller = XksCaller::of(&root(&api), &made);
        let plaintext = b"a data key of thirty-two bytes!!";
        let aad = b"project=nile,department=marketing";

        for signer in [Signer::Curl, Signer::Botocore] {
            let call = |path: &str, body: &Value| caller.call(signer, path, body);
            let (status, healthy) = call("health", &health());
            assert_eq!(status, 200, "{signer:?}: {healthy}");
            assert_eq!(healthy["ekmFleetDetails"][0]["healthStatus"], "ACTIVE", "{healthy}");
            assert_eq!(healthy["ekmFleetDetails"][0]["id"], partition["serial_number"], "{healthy}");
            assert!(healthy["xksProxyFleetSize"].as_u64().unwrap() >= 1 && healthy["xksProxyVendor"].is_string(), "{healthy}");
            assert_xks_error(&call("health", &json!({})), 400, "ValidationException");
            assert_xks_error(&call("health", &json!({"requestMetadata": {}})), 400, "ValidationException");

            for (id, usage) in [(&both, json!(["ENCRYPT", "DECRYPT"])), (&encrypt_only, json!(["ENCRYPT"])), (&decrypt_only, json!(["DECRYPT"])), (&impotent, json!([]))] {
                let (status, described) = call(&format!("keys/{id}/metadata"), &metadata_call());
                assert_eq!(status, 200, "{described}");
                assert_eq!(described, json!({"keySpec": "AES_256", "keyUsage": usage, "keyStatus": "ENABLED"}));
            }

            // A round trip with additional data and the integrity value,
            // which is SHA-256 over aad, metadata, IV, ciphertext and tag.
            let (status, sealed) = call(&format!("keys/{both}/encrypt"), &encrypt(plaintext, Some(aad), true));
            assert_eq!(status, 200, "{sealed}");
            let (iv, ciphertext, tag, metadata) = (unb64(&sealed["initializationVector"]), unb64(&sealed["ciphertext"]), unb64(&sealed["authenticationTag"]), unb64(&sealed["ciphertextMetadata"]));
            assert_eq!((iv.len(), ciphertext.len(), tag.len()), (12, plaintext.len(), 16));
            assert!(!metadata.is_empty() && metadata.len() <= 20);
            assert_ne!(&ciphertext[..], &plaintext[..]);
            let integrity = Sha256::digest([&aad[..], &metadata, &iv, &ciphertext, &tag].concat());
            assert_eq!(unb64(&sealed["ciphertextDataIntegrityValue"]), integrity.to_vec());
            let (status, opened) = call(&format!("keys/{both}/decrypt"), &decrypt(&sealed, Some(aad)));
            assert_eq!((status, unb64(&opened["plaintext"])), (200, plaintext.to_vec()), "{opened}");
            // Without additional data, and no integrity value unless asked for.
            let (_, bare) = call(&format!("keys/{both}/encrypt"), &encrypt(plaintext, None, false));
            assert!(bare.get("ciphertextDataIntegrityValue").is_none(), "{bare}");
            assert_eq!(unb64(&call(&format!("keys/{both}/decrypt"), &decrypt(&bare, None)).1["plaintext"]), plaintext.to_vec());

            // Whatever was changed, the tag does not authenticate it.
            let good = decrypt(&sealed, Some(aad));
            for field in ["ciphertext", "authenticationTag", "initializationVector", "additionalAuthenticatedData", "ciphertextMetadata"] {
                assert_xks_error(&call(&format!("keys/{both}/decrypt"), &tampered(&good, field)), 400, "InvalidCiphertextException");
            }
            assert_xks_error(&call(&format!("keys/{both}/decrypt"), &decrypt(&sealed, None)), 400, "InvalidCiphertextException");
            let mut short_tag = good.clone();
            short_tag["authenticationTag"] = b64(&tag[..12]).into();
            assert_xks_error(&call(&format!("keys/{both}/decrypt"), &short_tag), 400, "InvalidCiphertextException");

            // What the keys' attributes allow.
            let (_, only_sealed) = call(&format!("keys/{encrypt_only}/encrypt"), &encrypt(plaintext, None, false));
            assert!(only_sealed["ciphertext"].is_string(), "{only_sealed}");
            assert_xks_error(&call(&format!("keys/{encrypt_only}/decrypt"), &decrypt(&only_sealed, None)), 400, "InvalidKeyUsageException");
            assert_xks_error(&call(&format!("keys/{encrypt_only}/encrypt"), &encrypt(plaintext, Some(aad), true)), 400, "InvalidKeyUsageException");
            assert_xks_error(&call(&format!("keys/{decrypt_only}/encrypt"), &encrypt(plaintext, None, false)), 400, "InvalidKeyUsageException");
            assert_xks_error(&call(&format!("keys/{decrypt_only}/decrypt"), &decrypt(&sealed, Some(aad))), 400, "InvalidCiphertextException");
            assert_xks_error(&call(&format!("keys/{impotent}/encrypt"), &encrypt(plaintext, None, false)), 400, "InvalidKeyUsageException");
            assert_xks_error(&call(&format!("keys/{impotent}/decrypt"), &decrypt(&sealed, None)), 400, "InvalidKeyUsageException");

            // Keys that are not this keystore's external keys.
            for id in [uuid::Uuid::new_v4().to_string(), "not-a-key".to_owned(), aes_128.clone(), elsewhere.clone()] {
                assert_xks_error(&call(&format!("keys/{id}/metadata"), &metadata_call()), 404, "KeyNotFoundException");
                assert_xks_error(&call(&format!("keys/{id}/encrypt"), &encrypt(plaintext, None, false)), 404, "KeyNotFoundException");
            }

            // Bodies the spec's rules refuse.
            let mut no_algorithm = encrypt(plaintext, None, false);
            no_algorithm.as_object_mut().unwrap().remove("encryptionAlgorithm");
            assert_xks_error(&call(&format!("keys/{both}/encrypt"), &no_algorithm), 400, "ValidationException");
            let mut not_base64 = encrypt(plaintext, None, false);
            not_base64["plaintext"] = "***".into();
            assert_xks_error(&call(&format!("keys/{both}/encrypt"), &not_base64), 400, "ValidationException");
            let mut no_principal = encrypt(plaintext, None, false);
            no_principal["requestMetadata"].as_object_mut().unwrap().remove("awsPrincipalArn");
            assert_xks_error(&call(&format!("keys/{both}/encrypt"), &no_principal), 400, "ValidationException");
            assert_xks_error(&call(&format!("keys/{both}/encrypt"), &encrypt(&[7; 8193], None, false)), 501, "UnsupportedOperationException");

            // Credentials and paths.
            let wrong_secret = XksCaller { secret: format!("{}x", caller.secret), ..caller.clone() };
            assert_xks_error(&wrong_secret.call(signer, "health", &health()), 401, "AuthenticationFailedException");
            let unknown = XksCaller { access_key_id: "AAAAAAAAAAAAAAAAAAAAAAAA".into(), ..caller.clone() };
            assert_xks_error(&unknown.call(signer, &format!("keys/{both}/encrypt"), &encrypt(plaintext, None, false)), 401, "AuthenticationFailedException");
            let other_region = XksCaller { region: "eu-west-1".into(), ..caller.clone() };
            assert_xks_error(&other_region.call(signer, "health", &health()), 401, "AuthenticationFailedException");
            let nowhere = XksCaller { uri_path: "/calls/invalid/kms/xks/v1".into(), ..caller.clone() };
            assert_xks_error(&nowhere.call(signer, "health", &health()), 404, "InvalidUriPathException");
        }

        // A request dated more than five minutes either side of the server's clock.
        let format = time::format_description::parse_borrowed::<2>("[year][month][day]T[hour][minute][second]Z").unwrap();
        for skew in [time::Duration::minutes(-10), time::Duration::minutes(10)] {
            let date = (time::OffsetDateTime::now_utc() + skew).format(&format).unwrap();
            let answer = caller.call_dated(Signer::Curl, "health", &health(), Some(&date));
            assert_xks_error(&answer, 401, "AuthenticationFailedException");
            assert!(answer.1["errorMessage"].as_str().unwrap().contains("five minutes"), "{}", answer.1);
        }

        // Paths under the API that name no call: the spec's 404.
        for call in [format!("keys/{impotent}/sign"), format!("keys/{impotent}"), "keys//metadata".to_owned(), "health/extra".to_owned()] {
            assert_xks_error(&caller.call(Signer::Curl, &call, &health()), 404, "InvalidUriPathException");
        }

        // POST only.
        let refused = match ureq::get(&format!("{}{}/health", root(&api), caller.uri_path)).call() {
            Err(ureq::Error::Status(status, answer)) => (status, answer.into_json::<Value>().unwrap()),
            other => panic!("{other:?}"),
        };
        assert_xks_error(&refused, 405, "ValidationException");

        // A key destroyed on the HSM, or forgotten by the service, is not found.
        let (_, sealed) = caller.call(Signer::Curl, &format!("keys/{both}/encrypt"), &encrypt(plaintext, None, false));
        assert_eq!(api.post_empty(&format!("/cckm/hsm/luna/{both}/delete")).0, 200);
        api.settled(&both);
        assert_xks_error(&caller.call(Signer::Curl, &format!("keys/{both}/decrypt"), &decrypt(&sealed, None)), 404, "KeyNotFoundException");
        assert_eq!(api.call("DELETE", &format!("{KEYS}/{encrypt_only}"), Some(&api.token), None).0, 204);
        assert_xks_error(&caller.call(Signer::Curl, &format!("keys/{encrypt_only}/encrypt"), &encrypt(plaintext, None, false)), 404, "KeyNotFoundException");

        // Every call is in the trail under the AWS principal and KMS's
        // request id, never with its data; and counted by outcome.
        let mut body = encrypt(plaintext, None, false);
        body["requestMetadata"]["awsPrincipalArn"] = "arn:aws:iam::123456789012:user/Alice\n\u{1b}[31m".into();
        let request_id = body["requestMetadata"]["kmsRequestId"].as_str().unwrap().to_owned();
        assert_eq!(caller.call(Signer::Curl, &format!("keys/{impotent}/encrypt"), &body).0, 400);
        let (_, trail) = api.get(&format!("/audit/records?resource_id={impotent}&action=xks%20Encrypt&limit=100"));
        let record = trail["resources"].as_array().unwrap().iter().find(|r| r["request_id"] == request_id.as_str()).unwrap_or_else(|| panic!("{trail}"));
        assert_eq!(record["username"], "arn:aws:iam::123456789012:user/Alice??[31m", "control characters do not reach the trail: {record}");
        assert_eq!(record["resource_id"], impotent.as_str(), "{record}");
        assert_eq!(record["outcome"], "400 InvalidKeyUsageException", "{record}");
        assert_eq!(record["user_id"], caller.access_key_id.as_str(), "{record}");
        let (_, everything) = api.get("/audit/records?limit=1000");
        let everything = everything.to_string();
        assert!(everything.contains("xks Decrypt") && !everything.contains(&b64(plaintext)) && !everything.contains(sealed["ciphertext"].as_str().unwrap()));
        let metrics = ureq::get(&format!("{}/metrics", root(&api))).call().unwrap().into_string().unwrap();
        for counted in [
            r#"luna_xks_call_duration_seconds_count{call="Encrypt",keystore="ks-calls",outcome="ok"}"#,
            r#"luna_xks_call_duration_seconds_count{call="Decrypt",keystore="ks-calls",outcome="InvalidCiphertextException"}"#,
            r#"luna_xks_call_duration_seconds_count{call="GetHealthStatus",keystore="-",outcome="InvalidUriPathException"}"#,
        ] {
            assert!(metrics.contains(counted), "{counted} in {metrics}");
        }
    }
}
