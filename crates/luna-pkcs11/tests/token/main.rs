//! luna-pkcs11 against real SoftHSM2 tokens, each test on a token of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::ops::ControlFlow;
use std::process::Command;

use luna_domain::key::{check_update, AttributeChangeRequest};
use luna_domain::{Algorithm, Attribute, AttributeSet, Mechanism, ObjectType};
use luna_pkcs11::on_every_module;
use luna_pkcs11::testing::{unique_label, TestModule, USER_PIN};
use luna_pkcs11::{GenerateRequest, Pkcs11Token, Token, TokenError};
use secrecy::SecretString;
use uuid::Uuid;

fn attrs(names: &[&str]) -> AttributeSet {
    AttributeSet::parse_names(names).unwrap()
}

fn request(mechanism: Mechanism, size: u32, attributes: AttributeSet) -> GenerateRequest {
    GenerateRequest {
        cka_id: Uuid::new_v4().as_bytes().to_vec(),
        label: "hsm-key".into(),
        mechanism,
        size,
        attributes,
        remap: true,
        retry: false,
        wrap_with_trusted: false,
    }
}

fn retried(request: &GenerateRequest) -> GenerateRequest {
    GenerateRequest {
        retry: true,
        ..request.clone()
    }
}

fn count_objects(token: &Pkcs11Token) -> usize {
    token.scan(100, &mut |_| ControlFlow::Continue(())).unwrap().seen
}

fn collect_all(token: &Pkcs11Token) -> Vec<luna_pkcs11::ObjectRef> {
    let mut all = Vec::new();
    token
        .scan(7, &mut |batch| {
            all.extend_from_slice(batch);
            ControlFlow::Continue(())
        })
        .unwrap();
    all
}

mod gcm;
mod generation;
mod rules_and_sessions;
