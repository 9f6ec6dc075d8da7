//! The API over HTTP against an in-process server, real SoftHSM2 tokens, and
//! SQLite or PostgreSQL: the reference's walk-through field by field, every
//! class of bad input, every auth failure, and every conflict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use luna_api::on_both_backends;
use luna_api::testing::{
    assert_error, assert_same_values, assert_shaped_like, reference, Api, ADMIN_PASSWORD, SIGNING_KEY,
};
use luna_pkcs11::Token as _;
use serde_json::{json, Value};

const KEYS: &str = "/cckm/hsm/luna/keys";

fn reference_create(partition_id: &Value) -> Value {
    json!({
        "label": "hsm-key",
        "size": 2048,
        "partition_id": partition_id,
        "mechanism": "CKM_RSA_X9_31_KEY_PAIR_GEN",
        "attributes": ["CKA_MODIFIABLE", "CKA_SENSITIVE", "CKA_EXTRACTABLE"]
    })
}

mod operations;
mod requests;
