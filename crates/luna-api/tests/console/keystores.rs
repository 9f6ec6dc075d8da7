//! The XKS keystores page (admins only): a keystore made, its secret shown
//! once and taken by curl's SigV4; rotated (both credentials listed valid);
//! deleted. A bad prefix is refused with the server's sentence.

use luna_api::testing::{xks_metadata, Signer, XksCaller};

use super::*;

#[test]
fn keystores_are_made_rotated_and_deleted_from_the_console_and_their_secret_shown_once() {
    let api = Api::start(TestDatabase::sqlite().unwrap());
    let root = api.base.trim_end_matches("/api/v1").to_owned();
    let partition = api.partition("console-xks", 1);
    let browser = Browser::start();
    browser.log_in(&root, "admin", ADMIN_PASSWORD);
    browser.goto(&format!("{root}/ui/#/keystores"));
    browser.find("#keystores");
    browser.type_into("#new-keystore input[name=name]", "payments");
    browser.type_into("#new-keystore input[name=prefix]", "pay ments");
    browser.type_into("#new-keystore input[name=region]", "us-east-1");
    browser.type_into(
        "#new-keystore input[name=partition]",
        partition["id"].as_str().unwrap(),
    );
    browser.click("#new-keystore button[type=submit]");
    browser.wait("#new-keystore [role=alert]", |t| t.contains("uri_path_prefix"));

    browser.type_into("#new-keystore input[name=prefix]", "payments/xks");
    browser.click("#new-keystore button[type=submit]");
    let secret = browser.text(&browser.wait("#new-credential dd.secret", |t| t.len() == 48));
    let access_key_id = browser.text(&browser.find("#new-credential dd.access-key-id"));
    browser.screenshot("keystores");
    let caller = XksCaller {
        root: root.clone(),
        uri_path: "/payments/xks/kms/xks/v1".into(),
        region: "us-east-1".into(),
        access_key_id: access_key_id.clone(),
        secret: secret.clone(),
        tls: None,
    };
    let health = serde_json::json!({"requestMetadata": xks_metadata("KmsHealthCheck")});
    assert_eq!(caller.call(Signer::Curl, "health", &health).0, 200);

    // Shown once: the page read again has the id, not the secret.
    browser.goto(&format!("{root}/ui/#/keys"));
    browser.find("#keys");
    browser.goto(&format!("{root}/ui/#/keystores"));
    let row = "#keystores tr[data-name='payments']";
    browser.wait(&format!("{row} td.credentials"), |t| t.contains(&access_key_id));
    assert!(!browser.page_text().contains(&secret));

    browser.click(&format!("{row} button.rotate-keystore"));
    let rotated = browser.text(&browser.wait("#new-credential dd.secret", |t| t.len() == 48 && t != secret));
    assert_ne!(rotated, secret);
    browser.wait(&format!("{row} td.credentials"), |t| {
        t.matches("valid").count() == 2
    });
    assert_eq!(
        caller.call(Signer::Curl, "health", &health).0,
        200,
        "the old one still works for the overlap"
    );

    browser.click(&format!("{row} button.delete-keystore"));
    browser.wait("#keystores tbody", |t| !t.contains("payments"));
    assert_eq!(caller.call(Signer::Curl, "health", &health).0, 404);
}
