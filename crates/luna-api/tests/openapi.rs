//! The OpenAPI document against the router and a live server: every route is
//! documented, every documented operation exists, and what the server answers
//! (auth, status) is what the document says it may.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use luna_api::testing::Api;
use luna_store::testing::TestDatabase;
use serde_json::Value;

const METHODS: [&str; 4] = ["get", "post", "patch", "delete"];

fn document() -> Value {
    luna_api::server::document_json()
}

/// (method, path, operation) for every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            found.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    found
}

/// The create body the document describes (`CreateKeyBody`) is the one the
/// handler reads (luna-domain's `CreateKeyRequest`): the same fields, and the
/// same required ones.
#[test]
fn the_create_body_is_documented_as_read() {
    let doc = document();
    let schema = &doc["components"]["schemas"]["CreateKeyBody"];
    let documented: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let read = serde_json::to_value(luna_domain::CreateKeyRequest::default()).unwrap();
    let read: BTreeSet<String> = read.as_object().unwrap().keys().cloned().collect();
    assert_eq!(documented, read);
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let optional: BTreeSet<String> = ["attributes".to_owned()].into();
    assert_eq!(
        required,
        &read - &optional,
        "every field but attributes is required"
    );
}

#[test]
fn operation_ids_are_unique_and_every_link_names_one() {
    let doc = document();
    let operations = operations(&doc);
    let ids: BTreeSet<&str> = operations
        .iter()
        .map(|(m, p, op)| {
            op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{m} {p} has no operationId"))
        })
        .collect();
    assert_eq!(ids.len(), operations.len(), "operationIds repeat: {ids:?}");
    let mut links = 0;
    for (method, path, operation) in &operations {
        for answer in operation["responses"].as_object().unwrap().values() {
            for (name, link) in answer["links"].as_object().into_iter().flatten() {
                let target = link["operationId"].as_str().unwrap();
                assert!(
                    ids.contains(target),
                    "{method} {path} links {name} to no operation"
                );
                links += 1;
            }
        }
    }
    assert!(links >= 15, "{links} links");
}

#[test]
fn every_error_answer_is_an_error_body_and_every_list_parameter_is_described() {
    let doc = document();
    for (method, path, operation) in operations(&doc) {
        for (status, answer) in operation["responses"].as_object().unwrap() {
            assert!(
                !answer["description"].as_str().unwrap().is_empty(),
                "{method} {path} {status}"
            );
            if status.starts_with('4') || status == "500" {
                assert_eq!(
                    answer["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        if method == "get" && !path.contains('{') && operation["parameters"].is_array() {
            let names: Vec<&str> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(&names[..3], ["skip", "limit", "sort"], "{path}");
        }
    }
    let keys = &doc["paths"]["/api/v1/cckm/hsm/luna/keys"]["get"]["parameters"];
    let status = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "status")
        .unwrap();
    let values: Vec<&str> = status["schema"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected: Vec<&str> = luna_domain::KeyStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(values, expected);
    assert!(values.contains(&"AVAILABLE"));
}

/// A documented path with its id made the nil UUID, relative to the harness's
/// base (/api/v1; /metrics sits beside it).
fn relative(path: &str) -> String {
    let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
    concrete
        .strip_prefix("/api/v1")
        .map_or(format!("/../..{concrete}"), str::to_owned)
}

/// Each documented operation, called on a live server without a token and
/// then as admin with an empty body: the routes exist, protection is as the
/// document says, and every status is one the document lists.
#[test]
fn a_live_server_answers_as_the_document_says() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let doc = document();

    let (status, served) = api.call("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(served, doc, "the served document is the generated one");

    for (method, path, operation) in operations(&doc) {
        let relative = relative(&path);
        let verb = method.to_uppercase();
        let body = operation["requestBody"].is_object().then_some("{}");
        let documented = |status: u16| operation["responses"].get(status.to_string()).is_some();

        let (status, answer) = api.call(&verb, &relative, None, body);
        if operation["security"].is_array() {
            assert_eq!(status, 401, "{verb} {path} without a token: {answer}");
        } else {
            assert_ne!(status, 401, "{verb} {path} is documented as open: {answer}");
        }
        assert!(
            documented(status),
            "{verb} {path} answered {status}, undocumented: {answer}"
        );

        let (status, answer) = api.call(&verb, &relative, Some(&api.token), body);
        assert!(
            documented(status),
            "{verb} {path} answered {status}, undocumented: {answer}"
        );
        let message = answer["message"].as_str().unwrap_or("");
        assert!(!message.starts_with("there is no"), "{verb} {path}: {message}");
    }

    // A documented path with a method it does not take: 405, naming the ones it does.
    for (path, item) in doc["paths"].as_object().unwrap() {
        let (status, answer) = api.call("PUT", &relative(path), Some(&api.token), Some("{}"));
        assert_eq!(status, 405, "PUT {path}: {answer}");
        let message = answer["message"].as_str().unwrap();
        for method in item.as_object().unwrap().keys() {
            assert!(message.contains(&method.to_uppercase()), "PUT {path}: {message}");
        }
    }
    let (status, _) = api.call("PUT", "/no/such/path", Some(&api.token), None);
    assert_eq!(status, 404);
}
