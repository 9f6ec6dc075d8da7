//! SigV4 as curl signs it (`--aws-sigv4`, a signer that is not this
//! project's): taken; refused once the body, path or a signed header
//! changes, for a wrong secret, a far date, another scope or an unknown
//! access key; taken with either secret while one is rotated.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;

use super::*;

const ACCESS_KEY_ID: &str = "AKIAXKSTESTKEY234567ABCDE";
const SECRET: &str = "PleaseReplaceThisWithSomeSecretOfLength43To64";
const REGION: &str = "us-east-1";
const SERVICE: &str = "kms-xks-proxy";

/// What curl sent: method, path, headers, body.
struct Captured {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn request(&self) -> ArrivedRequest<'_> {
        ArrivedRequest {
            method: &self.method,
            path: &self.path,
            query: "",
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn date(&self) -> OffsetDateTime {
        amz_date_time(&header(&self.headers, "x-amz-date").unwrap()).unwrap()
    }
}

/// Lets curl sign a POST of `body` to `path` with `secret`, and catches it.
fn signed_by_curl(path: &str, body: &str) -> Captured {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let curl = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--aws-sigv4", &format!("aws:amz:{REGION}:{SERVICE}")])
        .args(["--user", &format!("{ACCESS_KEY_ID}:{SECRET}")])
        .args(["--data-binary", body, &url])
        .spawn()
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let length: usize = header(&headers, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    reader
        .get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut curl = curl;
    assert!(curl.wait().unwrap().success());
    Captured {
        method,
        path,
        headers,
        body,
    }
}

fn secret(text: &str) -> Vec<SecretString> {
    vec![SecretString::from(text)]
}

#[test]
fn a_request_curl_signed_is_taken_and_any_change_to_it_is_refused() {
    let path = "/example/uri/path/prefix/kms/xks/v1/keys/foo/encrypt";
    let sent = signed_by_curl(
        path,
        r#"{"requestMetadata":{"kmsOperation":"Encrypt"},"plaintext":"AAAA"}"#,
    );
    let authorization = header(&sent.headers, "authorization").unwrap();
    assert!(
        authorization.contains("content-type;host;x-amz-date"),
        "curl signs the content type too: {authorization}"
    );
    let at = sent.date();
    let check = |request: &ArrivedRequest<'_>, now: OffsetDateTime, secrets: Vec<SecretString>| {
        verify(request, REGION, SERVICE, now, |id| {
            assert_eq!(id, ACCESS_KEY_ID);
            secrets
        })
    };
    assert_eq!(
        check(&sent.request(), at, secret(SECRET)),
        Ok(ACCESS_KEY_ID.to_owned())
    );
    assert_eq!(
        check(&sent.request(), at + Duration::minutes(4), secret(SECRET)),
        Ok(ACCESS_KEY_ID.to_owned())
    );
    // While a credential is rotated, either secret is taken.
    let both = vec![
        SecretString::from("the-old-secret-of-this-keystore-43-characters"),
        SecretString::from(SECRET),
    ];
    assert!(check(&sent.request(), at, both).is_ok());

    assert_eq!(
        check(
            &sent.request(),
            at,
            secret("a-wrong-secret-that-is-also-43-characters-long")
        ),
        Err(Refusal::Mismatch)
    );
    assert!(matches!(
        check(&sent.request(), at + Duration::minutes(6), secret(SECRET)),
        Err(Refusal::Stale(_))
    ));
    assert!(matches!(
        check(&sent.request(), at - Duration::minutes(6), secret(SECRET)),
        Err(Refusal::Stale(_))
    ));
    assert_eq!(
        check(&sent.request(), at, Vec::new()),
        Err(Refusal::UnknownAccessKey)
    );
    let elsewhere = verify(&sent.request(), "eu-west-1", SERVICE, at, |_| secret(SECRET));
    assert!(
        matches!(elsewhere, Err(Refusal::WrongScope { .. })),
        "{elsewhere:?}"
    );

    let body = br#"{"requestMetadata":{"kmsOperation":"Decrypt"},"plaintext":"AAAA"}"#;
    let changed_body = ArrivedRequest {
        body,
        ..sent.request()
    };
    assert_eq!(check(&changed_body, at, secret(SECRET)), Err(Refusal::Mismatch));
    let other_path = "/example/uri/path/prefix/kms/xks/v1/keys/bar/encrypt";
    assert_eq!(
        check(
            &ArrivedRequest {
                path: other_path,
                ..sent.request()
            },
            at,
            secret(SECRET)
        ),
        Err(Refusal::Mismatch)
    );
    let mut headers = sent.headers.clone();
    for (name, value) in &mut headers {
        if name.eq_ignore_ascii_case("content-type") {
            *value = "text/plain".into();
        }
    }
    assert_eq!(
        check(
            &ArrivedRequest {
                headers: &headers,
                ..sent.request()
            },
            at,
            secret(SECRET)
        ),
        Err(Refusal::Mismatch)
    );
    let unsigned: Vec<(String, String)> = sent
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("authorization"))
        .cloned()
        .collect();
    assert_eq!(
        check(
            &ArrivedRequest {
                headers: &unsigned,
                ..sent.request()
            },
            at,
            secret(SECRET)
        ),
        Err(Refusal::Missing("Authorization"))
    );
    let forged: Vec<(String, String)> = sent
        .headers
        .iter()
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case("authorization") {
                (n.clone(), v.replace("SignedHeaders=", "SignedHeaders=x;"))
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect();
    assert!(check(
        &ArrivedRequest {
            headers: &forged,
            ..sent.request()
        },
        at,
        secret(SECRET)
    )
    .is_err());
}

/// The benchmark's signer makes, for the same request at the same second,
/// the very headers curl made (and the verifier takes them).
#[test]
fn sign_makes_the_signature_curl_makes() {
    let body = r#"{"requestMetadata":{"kmsOperation":"Encrypt"}}"#;
    let captured = signed_by_curl("/example/kms/xks/v1/keys/k/encrypt", body);
    let host = header(&captured.headers, "host").unwrap();
    let secret = SecretString::from(SECRET);
    let [date, authorization] = sign(
        &captured.path,
        &host,
        body.as_bytes(),
        (ACCESS_KEY_ID, &secret),
        (REGION, SERVICE),
        captured.date(),
    );
    assert_eq!(Some(date.1), header(&captured.headers, "x-amz-date"));
    assert_eq!(Some(authorization.1), header(&captured.headers, "authorization"));
}

/// An `Authorization` naming a part twice (another credential first) is
/// malformed, whichever of them is right.
#[test]
fn a_part_named_twice_is_malformed() {
    let body = r#"{"requestMetadata":{}}"#;
    let captured = signed_by_curl("/kms/xks/v1/health", body);
    let authorization = header(&captured.headers, "authorization").unwrap();
    let doubled = authorization.replacen(
        "Credential=",
        "Credential=AAAAAAAAAAAAAAAAAAAAAAAA/20200101/us-east-1/kms-xks-proxy/aws4_request, Credential=",
        1,
    );
    let headers: Vec<(String, String)> = captured
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                if n.eq_ignore_ascii_case("authorization") {
                    doubled.clone()
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    let request = ArrivedRequest {
        headers: &headers,
        ..captured.request()
    };
    let refused = verify(&request, REGION, SERVICE, captured.date(), |_| secret(SECRET));
    assert_eq!(refused, Err(Refusal::Malformed));
}
