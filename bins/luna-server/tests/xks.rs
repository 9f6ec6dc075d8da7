//! `luna-server serve` as an XKS proxy over HTTPS with mutual TLS, as an
//! operator sets it up: a server certificate and a client CA made with
//! openssl, `--xks-client-ca`, the demo partition's key. Every call is
//! signed by curl (`--aws-sigv4`) and by botocore, each presenting the
//! client certificate (issued to the name AWS KMS's carry); a call without
//! one, or with one issued to another name, is refused; a certificate from
//! another CA fails the handshake; the CCKM API still takes clients without
//! certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use luna_api::testing::{xks_metadata, ClientTls, Signer, XksCaller};
use serde_json::{json, Value};
use support::{run, Server};

/// `openssl` with `args`, in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A key and a certificate named `name` (files `name.key`, `name.pem`),
/// issued to `CN=common_name`, signed by `ca` (self-signed if none), with
/// the extensions `extensions` (an openssl config section).
fn certificate_for(dir: &Path, name: &str, common_name: &str, ca: Option<&str>, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    let subject = format!("/CN={common_name}");
    match ca {
        None => openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-subj",
                &subject,
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ),
        Some(ca) => {
            let csr = format!("{name}.csr");
            openssl(
                dir,
                &["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
    }
}

fn certificate(dir: &Path, name: &str, ca: Option<&str>, extensions: &str) {
    certificate_for(dir, name, name, ca, extensions);
}

/// A JSON call to the CCKM API over HTTPS, with curl (trusting `ca`).
fn cckm(base: &str, ca: &Path, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut curl = Command::new("curl");
    curl.args([
        "--silent",
        "--show-error",
        "--write-out",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--cacert")
    .arg(ca)
    .args([
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
    ]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = run(curl.arg(format!("{base}{path}")));
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn xks_calls_over_mutual_tls_are_answered_to_curl_and_botocore_and_refused_without_the_clients_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    certificate(&pki, "server-ca", None, "");
    certificate(
        &pki,
        "server",
        Some("server-ca"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    certificate(&pki, "kms-ca", None, "");
    // As AWS KMS's certificates are named, for the keystore's region; and
    // one of the same CA issued to another name.
    certificate_for(
        &pki,
        "kms",
        "cks.kms.us-east-2.amazonaws.com",
        Some("kms-ca"),
        "extendedKeyUsage=clientAuth\n",
    );
    certificate_for(
        &pki,
        "other-region",
        "cks.kms.eu-west-1.amazonaws.com",
        Some("kms-ca"),
        "extendedKeyUsage=clientAuth\n",
    );
    certificate(&pki, "stranger-ca", None, "");
    certificate(
        &pki,
        "stranger",
        Some("stranger-ca"),
        "extendedKeyUsage=clientAuth\n",
    );
    certificate(&pki, "self-signed", None, "");
    let at = |name: &str| -> PathBuf { pki.join(name) };
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--tls-cert",
            at("server.pem").to_str().unwrap(),
            "--tls-key",
            at("server.key").to_str().unwrap(),
            "--xks-client-ca",
            at("kms-ca.pem").to_str().unwrap(),
            "--admin-password",
            "xks-admin-password",
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let ca = at("server-ca.pem");

    // The CCKM API, without a client certificate: as before.
    let (status, tokens) = cckm(
        &server.base,
        &ca,
        "POST",
        "/auth/tokens",
        None,
        &json!({"grant_type": "password", "username": "admin", "password": "xks-admin-password"}),
    );
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["jwt"].as_str().unwrap().to_owned();
    let partition = server.partition_id("single");
    let (status, key) = cckm(
        &server.base,
        &ca,
        "POST",
        "/cckm/hsm/luna/keys",
        Some(&token),
        &json!({"label": "xks-mtls", "size": 256, "partition_id": partition, "mechanism": "CKM_AES_KEY_GEN", "attributes": ["CKA_ENCRYPT", "CKA_DECRYPT"]}),
    );
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cckm(
        &server.base,
        &ca,
        "GET",
        &format!("/cckm/hsm/luna/keys/{key_id}"),
        Some(&token),
        &json!({}),
    )
    .1["status"]
        != "AVAILABLE"
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, keystore) = cckm(
        &server.base,
        &ca,
        "POST",
        "/xks/keystores",
        Some(&token),
        &json!({"name": "mtls", "uri_path_prefix": "example/prefix", "region": "us-east-2", "partition_id": partition}),
    );
    assert_eq!(status, 201, "{keystore}");

    let root = server.base.trim_end_matches("/api/v1");
    let mut caller = XksCaller::of(root, &keystore);
    caller.tls = Some(ClientTls {
        cert: at("kms.pem"),
        key: at("kms.key"),
        server_ca: ca.clone(),
    });
    let plaintext = STANDARD.encode(b"a data key over mutual TLS");
    for signer in [Signer::Curl, Signer::Botocore] {
        let health = json!({"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "3c5a2f9e-1d2b-4c8e-9f00-112233445566"}});
        let (status, healthy) = caller.call(signer, "health", &health);
        assert_eq!(status, 200, "{signer:?}: {healthy}");
        assert_eq!(
            healthy["ekmFleetDetails"][0]["healthStatus"], "ACTIVE",
            "{healthy}"
        );
        let (status, described) = caller.call(
            signer,
            &format!("keys/{key_id}/metadata"),
            &json!({"requestMetadata": xks_metadata("DescribeKey")}),
        );
        assert_eq!(
            (status, &described["keyUsage"]),
            (200, &json!(["ENCRYPT", "DECRYPT"])),
            "{described}"
        );
        let (status, sealed) = caller.call(signer, &format!("keys/{key_id}/encrypt"), &json!({"requestMetadata": xks_metadata("Encrypt"), "plaintext": plaintext, "encryptionAlgorithm": "AES_GCM", "ciphertextDataIntegrityValueAlgorithm": "SHA_256"}));
        assert_eq!(status, 200, "{signer:?}: {sealed}");
        let (status, opened) = caller.call(signer, &format!("keys/{key_id}/decrypt"), &json!({"requestMetadata": xks_metadata("Decrypt"),
            "ciphertext": sealed["ciphertext"], "ciphertextMetadata": sealed["ciphertextMetadata"], "initializationVector": sealed["initializationVector"],
            "authenticationTag": sealed["authenticationTag"], "encryptionAlgorithm": "AES_GCM"}));
        assert_eq!(
            (status, &opened["plaintext"]),
            (200, &json!(plaintext)),
            "{opened}"
        );
    }

    // A health call by `who` is refused 401, saying `why`.
    let refused_saying = |who: &XksCaller, why: &str| {
        let (status, refused) = who.call(
            Signer::Curl,
            "health",
            &json!({"requestMetadata": xks_metadata("KmsHealthCheck")}),
        );
        assert_eq!(
            (status, refused["errorName"].as_str()),
            (401, Some("AuthenticationFailedException")),
            "{refused}"
        );
        assert!(
            refused["errorMessage"].as_str().unwrap().contains(why),
            "{refused}"
        );
    };
    // No client certificate: the TLS layer lets the connection in (the
    // CCKM API's clients have none), the proxy refuses the call.
    refused_saying(
        &XksCaller {
            tls: None,
            ..caller.clone()
        },
        "mutual TLS",
    );
    // The right CA, the wrong name: refused (KMS's CAs are public ones).
    refused_saying(
        &XksCaller {
            tls: Some(ClientTls {
                cert: at("other-region.pem"),
                key: at("other-region.key"),
                server_ca: ca.clone(),
            }),
            ..caller.clone()
        },
        "cks.kms.us-east-2.amazonaws.com",
    );

    // A certificate from another CA, or self-signed: the handshake fails,
    // with the alert AWS's test client looks for.
    for (cert, key) in [
        ("stranger.pem", "stranger.key"),
        ("self-signed.pem", "self-signed.key"),
    ] {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "-v", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(at(cert))
            .arg("--key")
            .arg(at(key))
            .args(["--aws-sigv4", "aws:amz:us-east-2:kms-xks-proxy", "--user"])
            .arg(format!("{}:{}", caller.access_key_id, caller.secret))
            .args(["-H", "Content-Type: application/json", "--data-binary", "{}"])
            .arg(format!("{root}/example/prefix/kms/xks/v1/health"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{cert}: {said}");
        assert!(
            said.contains("TLS alert, handshake failure") || said.contains("alert handshake failure"),
            "{cert}: {said}"
        );
    }
    server.stop();
}
