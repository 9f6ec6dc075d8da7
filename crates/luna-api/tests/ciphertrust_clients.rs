//! The clients people already run against CipherTrust Manager, their
//! requests sent exactly as their public code sends them.
//!
//! Terraform (ThalesGroup/terraform-provider-ciphertrust,
//! `internal/provider/common/client.go` and `token_refresh.go`): signs in with
//! `AuthStruct` marshalled, so `username`, `password` and `domain` always (the
//! domain empty by default), `auth_domain` when set, and no `grant_type`;
//! refreshes with the same struct holding only `grant_type: refresh_token`,
//! the refresh token and `renew_refresh_token: true` (empty `username`,
//! `password` and `domain`); reads `jwt` and `refresh_token` from the answer,
//! and the JWT's `exp` to refresh a minute before it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use luna_api::testing::{assert_error, Api, ADMIN_PASSWORD};
use serde_json::{json, Value};

fn login(api: &Api, body: &Value) -> (u16, Value) {
    api.call("POST", "/auth/tokens", None, Some(&body.to_string()))
}

/// The `exp` claim of a JWT, read without checking it, as the provider does.
fn expiry(jwt: &str) -> i64 {
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["exp"].as_i64().unwrap()
}

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
