//! AWS KMS as an XKS proxy's caller, for tests: requests signed by curl or
//! botocore (signers that are not this project's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

/// A SigV4 signer that is not this project's: Debian's curl
/// (`--aws-sigv4`), or botocore's `SigV4Auth` (testdata/xks/botocore_call.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Curl,
    Botocore,
}

/// Client certificate, key and the CA that signed the server's, for mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub server_ca: std::path::PathBuf,
}

/// AWS KMS as an XKS proxy's caller: a keystore's URI path and credential.
#[derive(Debug, Clone)]
pub struct XksCaller {
    /// `http://host:port` or `https://host:port`.
    pub root: String,
    /// `/{uri_path_prefix}/kms/xks/v1`.
    pub uri_path: String,
    pub region: String,
    pub access_key_id: String,
    pub secret: String,
    pub tls: Option<ClientTls>,
}

impl XksCaller {
    /// The caller of the keystore `keystore` (a create's or rotation's
    /// answer, with its `new_credential`) on the server at `root`.
    pub fn of(root: &str, keystore: &Value) -> XksCaller {
        XksCaller {
            root: root.to_owned(),
            uri_path: keystore["uri_path"].as_str().unwrap().to_owned(),
            region: keystore["region"].as_str().unwrap().to_owned(),
            access_key_id: keystore["new_credential"]["access_key_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            secret: keystore["new_credential"]["secret_access_key"]
                .as_str()
                .unwrap()
                .to_owned(),
            tls: None,
        }
    }

    /// POSTs `body` to `{uri_path}/{call}`, signed by `signer` (curl may
    /// send its own `X-Amz-Date`, which it then signs).
    pub fn call(&self, signer: Signer, call: &str, body: &Value) -> (u16, Value) {
        self.call_dated(signer, call, body, None)
    }

    /// The same, dated `amz_date` (curl only).
    pub fn call_dated(
        &self,
        signer: Signer,
        call: &str,
        body: &Value,
        amz_date: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{}/{call}", self.root, self.uri_path);
        let mut command = match signer {
            Signer::Curl => {
                let mut curl = std::process::Command::new("curl");
                curl.args(["--silent", "--show-error", "--write-out", "\n%{http_code}\n"])
                    .args(["--aws-sigv4", &format!("aws:amz:{}:kms-xks-proxy", self.region)])
                    .args(["--user", &format!("{}:{}", self.access_key_id, self.secret)])
                    .args(["-H", "Content-Type: application/json", "--data-binary", "@-"]);
                if let Some(date) = amz_date {
                    curl.args(["-H", &format!("X-Amz-Date: {date}")]);
                }
                match &self.tls {
                    Some(tls) => {
                        curl.arg("--cacert").arg(&tls.server_ca);
                        curl.arg("--cert").arg(&tls.cert);
                        curl.arg("--key").arg(&tls.key);
                    }
                    None => {
                        curl.arg("--insecure");
                    }
                }
                curl.arg(&url);
                curl
            }
            Signer::Botocore => {
                assert!(amz_date.is_none(), "botocore dates its own signatures");
                let script = format!(
                    "{}/../../testdata/xks/botocore_call.py",
                    env!("CARGO_MANIFEST_DIR")
                );
                let mut python = std::process::Command::new("python3");
                python.arg(script).arg(&url).arg(&self.region);
                if let Some(tls) = &self.tls {
                    python.arg(&tls.cert).arg(&tls.key).arg(&tls.server_ca);
                }
                python
                    .env("XKS_ACCESS_KEY_ID", &self.access_key_id)
                    .env("XKS_SECRET", &self.secret);
                python
            }
        };
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.to_string().as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let (body, status) = text.trim_end().rsplit_once('\n').unwrap_or_else(|| {
            panic!(
                "{signer:?} said: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let status: u16 = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{signer:?} said: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        // The spec's bodies are one line of JSON, as AWS's test client reads them.
        assert!(!body.contains('\n'), "{body}");
        (
            status,
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    }
}

/// The `requestMetadata` KMS sends with `kms_operation`.
pub fn xks_metadata(kms_operation: &str) -> Value {
    json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": kms_operation,
        "kmsRequestId": uuid::Uuid::new_v4().to_string(),
        "kmsViaService": "ebs",
    })
}
