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
use luna_api::testing::{assert_error, hsm_certificate, Api, ADMIN_PASSWORD};
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

mod connection_changes;
mod sessions_and_lookups;
