//! `lunactl keystores`: an XKS keystore made (its secret printed once, and
//! taken by curl's SigV4), listed, read without its secret, rotated and
//! deleted; a bad prefix refused with the server's sentence.

use luna_api::testing::{xks_metadata, Signer, XksCaller};

use super::*;

#[test]
fn keystores_are_made_listed_rotated_and_deleted() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let partition = api.partition("cli-xks", 1);
    let user = User::new(&server_of(&api));
    assert!(user.login(&[]).ok);
    let pid = partition["id"].as_str().unwrap();
    let made = user.run(&[
        "keystores",
        "create",
        "--name",
        "payments",
        "--uri-path-prefix",
        "payments/xks",
        "--region",
        "eu-west-1",
        "--partition",
        pid,
    ]);
    assert!(made.ok, "{}", made.stderr);
    assert!(
        made.stdout.contains("secret_access_key") && made.stdout.contains("shown this once"),
        "{}",
        made.stdout
    );
    let listed = user.run(&["keystores", "list", "-o", "json"]).json();
    let keystore = &listed["resources"][0];
    let id = keystore["id"].as_str().unwrap().to_owned();
    assert_eq!(keystore["uri_path"], "/payments/xks/kms/xks/v1");

    // The printed credential is the one AWS KMS signs with.
    let secret_line = made
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("secret_access_key"))
        .unwrap();
    let secret = secret_line.split_whitespace().last().unwrap();
    assert!(!user.run(&["keystores", "get", &id]).stdout.contains(secret));
    let caller = XksCaller {
        root: api.base.trim_end_matches("/api/v1").to_owned(),
        uri_path: "/payments/xks/kms/xks/v1".into(),
        region: "eu-west-1".into(),
        access_key_id: keystore["credentials"][0]["access_key_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        secret: secret.to_owned(),
        tls: None,
    };
    let health = serde_json::json!({"requestMetadata": xks_metadata("KmsHealthCheck")});
    assert_eq!(caller.call(Signer::Curl, "health", &health).0, 200);

    let table = user.run(&["keystores", "list"]);
    assert!(
        table.stdout.lines().next().unwrap().contains("URI_PATH"),
        "{}",
        table.stdout
    );
    let rotated = user
        .run(&["keystores", "rotate", &id, "--overlap-hours", "1", "-o", "json"])
        .json();
    assert_eq!(rotated["credentials"].as_array().unwrap().len(), 2, "{rotated}");
    assert!(rotated["new_credential"]["secret_access_key"].is_string());
    assert_eq!(
        caller.call(Signer::Curl, "health", &health).0,
        200,
        "the old one is taken for the overlap"
    );

    let refused = user.run(&[
        "keystores",
        "create",
        "--name",
        "x",
        "--uri-path-prefix",
        "a b",
        "--region",
        "eu-west-1",
        "--partition",
        pid,
    ]);
    assert!(
        !refused.ok && refused.stderr.contains("uri_path_prefix"),
        "{}",
        refused.stderr
    );
    assert!(user.run(&["keystores", "delete", &id]).ok);
    assert_eq!(caller.call(Signer::Curl, "health", &health).0, 404);
}
