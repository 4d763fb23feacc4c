//! The `"hmac"` signing format through `walhook run`: for each variant
//! (hash, encoding, prefix, timestamp, rotation) the test computes the HMAC
//! itself from the raw body it received, accepts what walhook sent and
//! rejects a changed byte; then `walhook receive`, given the same settings
//! and the endpoint's credentials (basic, bearer, API key), accepts the
//! request as sent and refuses it changed, unsigned or without credentials.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use crate::support::walhook::base_config;
use crate::support::{fresh_db, Received, Receiver, Walhook, WAIT};

const SECRET: &str = "It's a Secret to Everybody";
const SECRET_2: &str = "the next secret";

/// One endpoint's signing settings, as the test reads them.
struct Variant {
    name: &'static str,
    sha512: bool,
    base64: bool,
    header: &'static str,
    prefix: &'static str,
    timestamp_header: Option<&'static str>,
    secrets: &'static [&'static str],
    /// The endpoint's `auth` and the matching `walhook receive` flag.
    auth: &'static str,
    receive_flag: &'static [&'static str],
    /// The header the credential is sent in.
    credential_header: Option<&'static str>,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "github",
        sha512: false,
        base64: false,
        header: "X-Hub-Signature-256",
        prefix: "sha256=",
        timestamp_header: None,
        secrets: &[SECRET],
        auth: r#"{ type = "basic", username = "hooks", password = "pw-Basic" }"#,
        receive_flag: &["--basic", "hooks:pw-Basic"],
        credential_header: Some("authorization"),
    },
    Variant {
        name: "shopify",
        sha512: false,
        base64: true,
        header: "X-Shopify-Hmac-Sha256",
        prefix: "",
        timestamp_header: None,
        secrets: &[SECRET],
        auth: r#"{ type = "bearer", token = "tok-Bearer" }"#,
        receive_flag: &["--bearer", "tok-Bearer"],
        credential_header: Some("authorization"),
    },
    Variant {
        name: "stamped",
        sha512: true,
        base64: false,
        header: "X-Signature",
        prefix: "v1=",
        timestamp_header: Some("X-Timestamp"),
        secrets: &[SECRET],
        auth: r#"{ type = "api_key", header = "X-Api-Key", value = "key-ApiKey" }"#,
        receive_flag: &["--api-key", "X-Api-Key:key-ApiKey"],
        credential_header: Some("x-api-key"),
    },
    Variant {
        name: "rotating",
        sha512: true,
        base64: true,
        header: "X-Sig",
        prefix: "",
        timestamp_header: None,
        secrets: &[SECRET, SECRET_2],
        auth: r#"{ type = "none" }"#,
        receive_flag: &[],
        credential_header: None,
    },
];

impl Variant {
    fn config(&self, url: &str) -> String {
        let secrets: Vec<String> = self.secrets.iter().map(|s| format!("{s:?}")).collect();
        let mut signing = format!(
            "format = \"hmac\"\nsecret = [{}]\nheader = \"{}\"\nalgorithm = \"{}\"\nencoding = \"{}\"\n",
            secrets.join(", "),
            self.header,
            if self.sha512 { "sha512" } else { "sha256" },
            if self.base64 { "base64" } else { "hex" },
        );
        if !self.prefix.is_empty() {
            signing.push_str(&format!("prefix = \"{}\"\n", self.prefix));
        }
        if let Some(ts) = self.timestamp_header {
            signing.push_str(&format!("timestamp_header = \"{ts}\"\n"));
        }
        format!(
            "[endpoints.{name}]\nurl = \"{url}\"\nauth = {auth}\n\n[endpoints.{name}.signing]\n{signing}\n\
             [[strategies]]\nname = \"{name}\"\ntable = \"orders\"\nendpoint = \"{name}\"\non_insert = \"true\"\n\n",
            name = self.name,
            auth = self.auth,
        )
    }

    /// The signature the test expects for `body` under `secret`, computed
    /// here with the `hmac` and `sha2` crates.
    fn expected(&self, secret: &str, timestamp: Option<&str>, body: &[u8]) -> String {
        let mut message = Vec::new();
        if let Some(ts) = timestamp {
            message.extend_from_slice(ts.as_bytes());
            message.push(b'.');
        }
        message.extend_from_slice(body);
        let tag = if self.sha512 {
            let mut mac = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&message);
            mac.finalize().into_bytes().to_vec()
        } else {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&message);
            mac.finalize().into_bytes().to_vec()
        };
        let encoded = if self.base64 {
            base64::engine::general_purpose::STANDARD.encode(tag)
        } else {
            tag.iter().map(|b| format!("{b:02x}")).collect()
        };
        format!("{}{encoded}", self.prefix)
    }

    /// Whether the request's signature header holds a valid signature by
    /// `secret` over `body`.
    fn verifies(&self, request: &Received, secret: &str, body: &[u8]) -> bool {
        let timestamp = self.timestamp_header.map(|h| {
            request
                .header(h)
                .unwrap_or_else(|| panic!("{}: no {h}", self.name))
        });
        let expected = self.expected(secret, timestamp, body);
        let header = request
            .header(self.header)
            .unwrap_or_else(|| panic!("{}: no {}", self.name, self.header));
        header.split(',').any(|sig| sig.trim() == expected)
    }
}

/// A running `walhook receive`; its address from its first line.
async fn receive(args: &[&str]) -> (Walhook, String) {
    let args: Vec<&str> = ["receive", "--listen", "127.0.0.1:0"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let receive = Walhook::command(&args).env("WALHOOK_LOG", "warn").spawn();
    receive
        .wait_lines(WAIT, "the listening line", |lines| !lines.is_empty())
        .await;
    let addr = receive.lines()[0]
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (receive, format!("http://{addr}/hook"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hmac_variant_verifies_independently_and_in_walhook_receive() {
    let db = fresh_db("sec_hmac").await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), status text)")
        .await;
    let receiver = Receiver::start().await;
    let mut config = base_config(&db.url(), "sec_hmac", "sec_hmac");
    for variant in VARIANTS {
        config.push_str(&variant.config(&receiver.url(&format!("/{}", variant.name))));
    }
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "sec_hmac").await;
    db.psql("INSERT INTO orders VALUES (1, 150.50, 'open')")
        .await;
    receiver.wait_accepted_records(VARIANTS.len(), WAIT).await;
    walhook.stop().await;
    let requests = receiver.accepted();

    let http = reqwest::Client::new();
    for variant in VARIANTS {
        let request = requests
            .iter()
            .find(|r| r.path_and_query == format!("/{}", variant.name))
            .unwrap_or_else(|| panic!("nothing arrived for {}", variant.name));
        let mut changed = request.body.to_vec();
        let at = changed.len() / 2;
        changed[at] ^= 0x01;
        for secret in variant.secrets {
            assert!(
                variant.verifies(request, secret, &request.body),
                "{}: {:?} does not verify with {secret:?}",
                variant.name,
                request.header(variant.header)
            );
            assert!(
                !variant.verifies(request, secret, &changed),
                "{}: a changed byte verifies",
                variant.name
            );
        }
        assert!(!variant.verifies(request, "another secret", &request.body));
        if variant.timestamp_header.is_none() {
            assert!(request.header("x-timestamp").is_none());
        }

        // `walhook receive` with the same settings, holding one of the
        // secrets (the last: a receiver that already rotated).
        let mut args: Vec<&str> = vec!["--format", "hmac", "--header", variant.header];
        args.extend(["--secret", variant.secrets[variant.secrets.len() - 1]]);
        args.extend([
            "--algorithm",
            if variant.sha512 { "sha512" } else { "sha256" },
        ]);
        args.extend(["--encoding", if variant.base64 { "base64" } else { "hex" }]);
        if !variant.prefix.is_empty() {
            args.extend(["--prefix", variant.prefix]);
        }
        if let Some(ts) = variant.timestamp_header {
            args.extend(["--timestamp-header", ts]);
        }
        args.extend(variant.receive_flag);
        let (mut process, url) = receive(&args).await;
        let send = |headers: reqwest::header::HeaderMap, body: Vec<u8>| {
            http.post(&url).headers(headers).body(body).send()
        };
        let status = |response: reqwest::Response| response.status().as_u16();
        let sent = request.headers.clone();
        assert_eq!(
            status(send(sent.clone(), request.body.to_vec()).await.unwrap()),
            200,
            "{}: walhook receive refuses what walhook sent",
            variant.name
        );
        let refused = send(sent.clone(), changed.clone()).await.unwrap();
        assert_eq!(refused.status(), 401, "{}", variant.name);
        assert!(refused
            .text()
            .await
            .unwrap()
            .contains("no signature matches"));
        let mut unsigned = sent.clone();
        unsigned.remove(variant.header);
        assert_eq!(
            status(send(unsigned, request.body.to_vec()).await.unwrap()),
            401,
            "{}: unsigned",
            variant.name
        );
        if let Some(credential) = variant.credential_header {
            let mut anonymous = sent.clone();
            anonymous.remove(credential);
            let refused = send(anonymous, request.body.to_vec()).await.unwrap();
            assert_eq!(refused.status(), 401, "{}: no credential", variant.name);
            assert!(refused.text().await.unwrap().contains("credentials"));
            let mut wrong = sent.clone();
            let value = sent[credential]
                .to_str()
                .unwrap()
                .replace('=', "")
                .to_string()
                + "x";
            wrong.insert(credential, value.parse().unwrap());
            assert_eq!(
                status(send(wrong, request.body.to_vec()).await.unwrap()),
                401,
                "{}: a wrong credential",
                variant.name
            );
        }
        process.signal(libc::SIGINT);
        assert!(process.wait_exit(WAIT).await.success());
        let lines = process.lines();
        let total = lines.last().unwrap();
        assert!(
            total.starts_with("total: 1 batches, 1 records,"),
            "{}: {lines:?}",
            variant.name
        );
    }
}

#[tokio::test]
async fn receive_flags_that_do_not_fit_are_usage_errors() {
    for (args, expected) in [
        (
            &["--header", "X-Sig", "--secret", "s"][..],
            "--header: expected --format hmac",
        ),
        (&["--format", "hmac", "--secret", "s"][..], "--header"),
        (
            &["--format", "hmac", "--header", "X Sig", "--secret", "s"][..],
            "not a valid header name",
        ),
        (
            &["--basic", "no-colon-Secret"][..],
            "--basic: expected USER:PASSWORD",
        ),
        (
            &["--api-key", "X-Api-Key"][..],
            "--api-key: expected HEADER:VALUE",
        ),
    ] {
        let all: Vec<&str> = ["receive", "--listen", "127.0.0.1:0"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let output = Walhook::command(&all).output().await;
        assert_eq!(output.code(), Some(2), "{args:?}: {}", output.stderr);
        assert!(
            output.stderr.contains(expected),
            "{args:?}: {}",
            output.stderr
        );
        assert!(!output.stderr.contains("Secret"), "{}", output.stderr);
    }
}

#[tokio::test]
async fn receive_reads_credentials_from_the_environment() {
    let receive = Walhook::command(&["receive", "--listen", "127.0.0.1:0"])
        .env("WALHOOK_LOG", "warn")
        .env("WALHOOK_RECEIVE_API_KEY", "X-Api-Key:key-FromEnv")
        .spawn();
    receive
        .wait_lines(WAIT, "the listening line", |lines| !lines.is_empty())
        .await;
    let addr = receive.lines()[0]
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let url = format!("http://{addr}/hook");
    let body = super::batch_body("batch-1");
    let http = reqwest::Client::new();
    let with_key = http
        .post(&url)
        .header("X-Api-Key", "key-FromEnv")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);
    let without = http.post(&url).body(body).send().await.unwrap();
    assert_eq!(without.status(), 401);
    assert!(
        !receive.stderr().contains("key-FromEnv"),
        "{}",
        receive.stderr()
    );
}
