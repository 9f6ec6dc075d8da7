//! The XKS proxy against its token: AES-GCM encrypts and decrypts through
//! `POST …/kms/xks/v1/keys/{id}/encrypt|decrypt` (SigV4 checked, the key
//! read, the call audited) beside the same calls straight through
//! luna-pkcs11 on the same open token, at concurrency 1 and 8.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use luna_api::testing::xks_metadata;
use luna_pkcs11::{ObjectRef, Token};
use secrecy::SecretString;

use super::*;

/// `total` calls of `call` over `clients` threads: the rate and the p50 and
/// p99 of one call.
pub(crate) fn timed(clients: usize, total: usize, call: &(dyn Fn() + Sync)) -> Latencies {
    let start = Instant::now();
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    (0..total / clients)
                        .map(|_| {
                            let began = Instant::now();
                            call();
                            began.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Latencies {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// A POST of `body` to `path`, signed once for the whole run (KMS signs
/// each call; a signature is good for five minutes, and the proxy's cost
/// of checking it is the same).
struct Signed {
    url: String,
    headers: [(String, String); 2],
    body: String,
}

impl Signed {
    fn new(root: &str, path: &str, body: &serde_json::Value, keystore: &serde_json::Value) -> Signed {
        let host = root.trim_start_matches("http://").to_owned();
        let secret = SecretString::from(keystore["new_credential"]["secret_access_key"].as_str().unwrap());
        let body = body.to_string();
        let headers = luna_api::sigv4::sign(
            path,
            &host,
            body.as_bytes(),
            (
                keystore["new_credential"]["access_key_id"].as_str().unwrap(),
                &secret,
            ),
            ("us-east-1", luna_api::xks::SIGV4_SERVICE),
            time::OffsetDateTime::now_utc(),
        );
        Signed {
            url: format!("{root}{path}"),
            headers,
            body,
        }
    }

    fn send(&self, agent: &ureq::Agent) -> String {
        let mut request = agent.post(&self.url).set("Content-Type", "application/json");
        for (name, value) in &self.headers {
            request = request.set(name, value);
        }
        request.send_string(&self.body).unwrap().into_string().unwrap()
    }
}

/// A token as slow as a network HSM: each AES-GCM call waits `per_call`
/// (not on the CPU) before SoftHSM2 does it; calls wait side by side, as
/// a network HSM's do.
#[derive(Debug)]
struct NetworkLatency {
    per_call: Duration,
}

impl luna_pkcs11::CallObserver for NetworkLatency {
    fn started(&self, function: &'static str) {
        if function == "encrypt" || function == "decrypt" {
            std::thread::sleep(self.per_call);
        }
    }

    fn ended(&self, _: &'static str, _: Duration, _: Option<&luna_pkcs11::TokenError>) {}
}

/// The proxy against its token, on SoftHSM2 as it is (`per_call` none) or
/// slowed to a network HSM's pace.
pub(crate) fn xks(n: usize, per_call: Option<Duration>) {
    // The server's member token, kept for the raw calls: the same open token.
    let opened: Arc<OnceLock<Arc<dyn Token>>> = Arc::default();
    let kept = Arc::clone(&opened);
    let opener: luna_runner::tokens::TokenOpener = Arc::new(move |_, member, pin| {
        let module = luna_pkcs11::testing::module();
        let mut token: Arc<dyn Token> =
            Arc::new(module.open_token(&member.partition_label, Some(&member.serial_number), pin)?);
        if let Some(per_call) = per_call {
            token = Arc::new(luna_pkcs11::Observed::new(
                token,
                Arc::new(NetworkLatency { per_call }),
            ));
        }
        Ok(Arc::clone(kept.get_or_init(|| token)))
    });
    let api = Api::start_opening(
        TestDatabase::sqlite().unwrap(),
        luna_pkcs11::testing::module(),
        server_runner(),
        Some(opener),
    );
    let partition = api.partition("bench-xks", 1);
    let (_, created) = api.send(
        "POST",
        "/cckm/hsm/luna/keys",
        &json!({"label": "bench-xks", "size": 256, "partition_id": partition["id"], "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT", "CKA_DECRYPT"]}),
    );
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(api.settled(&key_id)["status"], "AVAILABLE");
    let (_, keystore) = api.send(
        "POST",
        "/xks/keystores",
        &json!({"name": "bench", "uri_path_prefix": "bench", "region": "us-east-1", "partition_id": partition["id"]}),
    );
    let token = Arc::clone(opened.get().expect("the server opened the token"));
    let cka_id = api
        .store()
        .get_key(Uuid::parse_str(&key_id).unwrap())
        .unwrap()
        .unwrap()
        .cka_id
        .clone();
    let handle: ObjectRef = token.find_by_id(&cka_id).unwrap()[0].handle;

    // A data key under 64 bytes of additional data, as KMS sends them.
    let (data_key, aad) = ([7u8; 32], [9u8; 64]);
    let gcm_aad = luna_domain::xks::gcm_aad(&aad, luna_domain::xks::CIPHERTEXT_METADATA_V1);
    let sealed = token.encrypt_gcm(handle, &gcm_aad, &data_key).unwrap();
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let encrypt = Signed::new(
        &root,
        &format!("/bench/kms/xks/v1/keys/{key_id}/encrypt"),
        &json!({"requestMetadata": xks_metadata("Encrypt"), "plaintext": STANDARD.encode(data_key),
                "additionalAuthenticatedData": STANDARD.encode(aad), "encryptionAlgorithm": "AES_GCM"}),
        &keystore,
    );
    let decrypt = Signed::new(
        &root,
        &format!("/bench/kms/xks/v1/keys/{key_id}/decrypt"),
        &json!({"requestMetadata": xks_metadata("Decrypt"), "ciphertext": STANDARD.encode(&sealed.ciphertext),
                "ciphertextMetadata": STANDARD.encode(luna_domain::xks::CIPHERTEXT_METADATA_V1),
                "initializationVector": STANDARD.encode(&sealed.iv), "authenticationTag": STANDARD.encode(&sealed.tag),
                "additionalAuthenticatedData": STANDARD.encode(aad), "encryptionAlgorithm": "AES_GCM"}),
        &keystore,
    );
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections_per_host(16)
        .build();
    assert!(encrypt.send(&agent).contains("\"ciphertext\""));
    assert!(decrypt.send(&agent).contains(&STANDARD.encode(data_key)));
    match per_call {
        None => println!("XKS proxy on SoftHSM2 (SQLite; each call audited), against the same token through luna-pkcs11; n={n}:"),
        Some(per_call) => println!(
            "XKS proxy on SoftHSM2 slowed to a network HSM's {} ms an AES-GCM call, against the same token; n={n}:",
            per_call.as_secs_f64() * 1000.0
        ),
    }
    for clients in [1, 8] {
        // What any request costs here, client included: a GET on the
        // encrypt path, refused at once (405: no lookup, no token, no record).
        let floor = timed(clients, n, &|| {
            let refused = agent.get(&encrypt.url).call();
            assert!(matches!(refused, Err(ureq::Error::Status(405, _))));
        });
        row(&format!("HTTP floor (a 405), concurrency {clients}"), &floor);
        let raw_encrypt = timed(clients, n, &|| {
            token.encrypt_gcm(handle, &gcm_aad, &data_key).unwrap();
        });
        let proxy_encrypt = timed(clients, n, &|| {
            encrypt.send(&agent);
        });
        let raw_decrypt = timed(clients, n, &|| {
            token.decrypt_gcm(handle, &gcm_aad, &sealed).unwrap();
        });
        let proxy_decrypt = timed(clients, n, &|| {
            decrypt.send(&agent);
        });
        for (what, raw, proxy) in [
            ("encrypts", &raw_encrypt, &proxy_encrypt),
            ("decrypts", &raw_decrypt, &proxy_decrypt),
        ] {
            row(&format!("raw {what}, concurrency {clients}"), raw);
            row(&format!("proxy {what}, concurrency {clients}"), proxy);
            println!(
                "    proxy / raw = {:.2}   proxy / HTTP floor = {:.2}",
                proxy.per_second / raw.per_second,
                proxy.per_second / floor.per_second
            );
        }
    }
}
