//! Standard Webhooks signatures and body tokens as endpoint security
//! prepares them, checked by independent implementations: the
//! `standardwebhooks` crate (the specification's own library) and the
//! `jsonwebtoken` crate.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use standardwebhooks::Webhook;

use super::prepare::{Attempt, Prepare};
use super::security::EndpointSecurity;
use super::signing::{Format, Signer, SigningKey};
use crate::config::EndpointConfig;

/// A 32-byte Standard Webhooks secret.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second one (rotation).
const WHSEC_2: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// An endpoint config from the body of an `[endpoints.NAME]` table.
fn endpoint(toml_text: &str) -> EndpointConfig {
    toml::from_str(toml_text).unwrap_or_else(|err| panic!("bad endpoint toml: {err}"))
}

/// An attempt as the sender builds it (a batch body as the batcher writes
/// it), timestamped now.
fn attempt(batch_id: &str) -> Attempt {
    let now = chrono::Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("webhook-id", batch_id.parse().unwrap());
    headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
    let body = format!(
        r#"{{"strategy":"big_orders","batch":{{"id":"{batch_id}","size":1,"first_lsn":"0/16B3748","last_lsn":"0/16B3748"}},"records":[{{"id":"0/16B3748:0","op":"insert","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-22T07:04:00.123456Z","new":{{"id":1,"amount":150.5}},"old":null}}]}}"#
    );
    Attempt {
        strategy: "big_orders".into(),
        batch_id: batch_id.into(),
        timestamp: now,
        headers,
        body: Bytes::from(body),
    }
}

fn security(toml_text: &str) -> EndpointSecurity {
    EndpointSecurity::new("hook", &endpoint(toml_text), reqwest::Client::new()).unwrap()
}

#[tokio::test]
async fn a_prepared_attempt_verifies_with_the_standardwebhooks_crate() {
    let security = security(&format!(
        "url = \"http://127.0.0.1:1/hook\"\nsigning = {{ secret = \"{WHSEC}\" }}"
    ));
    let mut attempt = attempt("batch-7");
    security.prepare(&mut attempt).await.unwrap();

    let signature = attempt.headers["webhook-signature"].to_str().unwrap();
    assert!(signature.starts_with("v1,"), "{signature}");
    assert_eq!(attempt.headers["webhook-id"], "batch-7");
    Webhook::new(WHSEC)
        .unwrap()
        .verify(&attempt.body, &attempt.headers)
        .expect("the spec's library accepts walhook's signature");
}

#[tokio::test]
async fn a_tampered_body_or_a_stale_timestamp_fails_verification() {
    let security = security(&format!(
        "url = \"http://127.0.0.1:1/hook\"\nsigning = {{ secret = \"{WHSEC}\" }}"
    ));
    let webhook = Webhook::new(WHSEC).unwrap();

    let mut tampered = attempt("batch-8");
    security.prepare(&mut tampered).await.unwrap();
    let changed = String::from_utf8(tampered.body.to_vec())
        .unwrap()
        .replace("150.5", "1500.5");
    assert!(webhook
        .verify(changed.as_bytes(), &tampered.headers)
        .is_err());

    // An attempt signed six minutes ago (a captured request replayed later).
    let mut stale = attempt("batch-9");
    stale.timestamp -= 6 * 60;
    security.prepare(&mut stale).await.unwrap();
    assert_eq!(
        stale.headers["webhook-timestamp"].to_str().unwrap(),
        stale.timestamp.to_string()
    );
    assert!(matches!(
        webhook.verify(&stale.body, &stale.headers),
        Err(standardwebhooks::WebhookError::TimestampTooOldError)
    ));

    // A different secret does not verify.
    let other = Webhook::new(WHSEC_2).unwrap();
    let mut fresh = attempt("batch-10");
    security.prepare(&mut fresh).await.unwrap();
    assert!(other.verify(&fresh.body, &fresh.headers).is_err());
}

#[tokio::test]
async fn while_rotating_receivers_with_either_secret_verify() {
    let security = security(&format!(
        "url = \"http://127.0.0.1:1/hook\"\nsigning = {{ secret = [\"{WHSEC}\", \"{WHSEC_2}\"] }}"
    ));
    let mut attempt = attempt("batch-11");
    security.prepare(&mut attempt).await.unwrap();
    let signature = attempt.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    for secret in [WHSEC, WHSEC_2] {
        Webhook::new(secret)
            .unwrap()
            .verify(&attempt.body, &attempt.headers)
            .unwrap_or_else(|err| panic!("{secret} does not verify: {err:?}"));
    }
}

#[test]
fn signer_output_matches_the_reference_library_signer() {
    let signer = Signer::new(
        Format::StandardWebhooks,
        vec![SigningKey::parse(WHSEC).unwrap()],
    )
    .unwrap();
    let body = br#"{"strategy":"s","records":[]}"#;
    let ours = signer.signature("msg_1", 1_700_000_000, body);
    let theirs = Webhook::new(WHSEC)
        .unwrap()
        .sign("msg_1", 1_700_000_000, body)
        .unwrap();
    assert_eq!(ours, theirs);
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
}

#[tokio::test]
async fn the_body_token_verifies_with_jsonwebtoken_and_the_signature_covers_it() {
    let security = security(&format!(
        "url = \"http://127.0.0.1:1/hook\"\nsigning = {{ secret = \"{WHSEC}\", include_token = true }}"
    ));
    let mut attempt = attempt("batch-12");
    security.prepare(&mut attempt).await.unwrap();

    // The body is still the batch, now with a `token` field.
    let body: serde_json::Value = serde_json::from_slice(&attempt.body).unwrap();
    assert_eq!(body["strategy"], "big_orders");
    assert_eq!(body["records"][0]["id"], "0/16B3748:0");
    let token = body["token"].as_str().expect("a token field");

    // A receiver verifies it with the key bytes of the whsec_ secret.
    let key_bytes = SigningKey::parse(WHSEC).unwrap().bytes().to_vec();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["walhook"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let decoded = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&key_bytes),
        &validation,
    )
    .expect("jsonwebtoken accepts the body token");
    let claims = decoded.claims;
    assert_eq!(claims.iss, "walhook");
    assert_eq!(claims.sub, "big_orders");
    assert_eq!(claims.jti, "batch-12");
    assert_eq!(claims.iat, attempt.timestamp);
    assert_eq!(claims.exp, attempt.timestamp + 300);

    // A token signed with another key is refused.
    let wrong = SigningKey::parse(WHSEC_2).unwrap().bytes().to_vec();
    assert!(jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&wrong),
        &validation
    )
    .is_err());

    // The signature is over the body with the token in it.
    Webhook::new(WHSEC)
        .unwrap()
        .verify(&attempt.body, &attempt.headers)
        .unwrap();
}

#[tokio::test]
async fn unsigned_endpoints_get_no_signature() {
    let security = security("url = \"http://127.0.0.1:1/hook\"");
    let mut attempt = attempt("batch-13");
    let before = attempt.body.clone();
    security.prepare(&mut attempt).await.unwrap();
    assert!(attempt.headers.get("webhook-signature").is_none());
    assert_eq!(attempt.body, before);
    assert!(!security.unauthorized());
}
