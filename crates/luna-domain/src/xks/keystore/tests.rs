//! Keystores: what a create takes and refuses; credentials in the spec's
//! alphabet and lengths; a rotation that leaves two valid at most.

use secrecy::ExposeSecret;

use super::*;

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_796_000_000 + seconds).unwrap()
}

fn request() -> KeystoreRequest {
    KeystoreRequest {
        name: Some("aws-prod".into()),
        uri_path_prefix: Some("/example/uri/path/prefix/".into()),
        region: Some("us-east-1".into()),
        partition_id: Some("fe192148-82eb-403f-96b2-125bf28d3824".into()),
    }
}

#[test]
fn a_keystore_takes_a_prefix_a_region_and_a_partition_and_refuses_others() {
    let made = request().create(Uuid::nil(), at(0)).unwrap();
    assert_eq!(
        made.uri_path_prefix, "example/uri/path/prefix",
        "kept without slashes at either end"
    );
    assert_eq!(made.region, "us-east-1");
    assert_eq!(
        KeystoreRequest {
            uri_path_prefix: Some(String::new()),
            ..request()
        }
        .create(Uuid::nil(), at(0))
        .unwrap()
        .uri_path_prefix,
        ""
    );
    for (bad, needle) in [
        (
            KeystoreRequest {
                uri_path_prefix: Some("a b".into()),
                ..request()
            },
            "uri_path_prefix",
        ),
        (
            KeystoreRequest {
                uri_path_prefix: Some("a//b".into()),
                ..request()
            },
            "no empty segment",
        ),
        (
            KeystoreRequest {
                uri_path_prefix: Some("x".repeat(129)),
                ..request()
            },
            "at most 128",
        ),
        (
            KeystoreRequest {
                region: Some("US East".into()),
                ..request()
            },
            "region",
        ),
        (
            KeystoreRequest {
                partition_id: None,
                ..request()
            },
            "partition_id is needed",
        ),
        (
            KeystoreRequest {
                partition_id: Some("p1".into()),
                ..request()
            },
            "not a UUID",
        ),
        (
            KeystoreRequest {
                name: None,
                ..request()
            },
            "name must not be empty",
        ),
    ] {
        let said = bad.create(Uuid::nil(), at(0)).unwrap_err().to_string();
        assert!(said.contains(needle), "{said:?} should say {needle:?}");
    }
}

#[test]
fn credentials_are_in_the_specs_alphabet_and_lengths() {
    assert_eq!(base32(b"foobar"), "MZXW6YTBOI", "RFC 4648's test vector");
    let random: [u8; CREDENTIAL_RANDOM_BYTES] = std::array::from_fn(|i| (i * 37 + 11) as u8);
    let (made, secret) = Credential::from_random(&random, at(0));
    let base32_alphabet = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
    };
    assert_eq!(made.access_key_id.len(), 24);
    assert!((20..=30).contains(&made.access_key_id.len()) && base32_alphabet(&made.access_key_id));
    let secret = secret.expose_secret();
    assert!(
        (43..=64).contains(&secret.len()) && base32_alphabet(secret),
        "{}",
        secret.len()
    );
    assert_ne!(made.access_key_id, secret[..24]);
    assert!(made.valid_at(at(1_000_000)));
}

#[test]
fn a_rotation_leaves_the_newest_older_credential_for_the_overlap_and_ends_the_rest() {
    let credential = |id: &str, made: i64, expires: Option<i64>| Credential {
        access_key_id: id.into(),
        created_at: at(made),
        expires_at: expires.map(at),
    };
    let now = at(1000);
    let ends = rotated(
        &[
            credential("OLDEST", 0, Some(5000)),
            credential("NEWEST", 500, None),
        ],
        Duration::hours(1),
        now,
    )
    .unwrap();
    assert_eq!(
        ends,
        vec![
            ("OLDEST".into(), now),
            ("NEWEST".into(), now + Duration::hours(1))
        ]
    );
    let sooner = rotated(&[credential("ENDING", 0, Some(1500))], Duration::hours(1), now).unwrap();
    assert_eq!(
        sooner,
        vec![("ENDING".into(), at(1500))],
        "an end already sooner stays"
    );
    assert!(rotated(&[], Duration::days(31), now)
        .unwrap_err()
        .to_string()
        .contains("between 0 and 30 days"));
    assert!(rotated(&[], Duration::seconds(-1), now).is_err());
    assert!(
        !credential("X", 0, Some(1000)).valid_at(now),
        "an end is exclusive"
    );
}
