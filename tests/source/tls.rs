//! TLS on the replication connection: sslmode require, verify-ca and
//! verify-full against a throwaway cluster with ssl = on and a certificate
//! for `localhost` signed by a test CA (made with the openssl CLI).
//! On the exclusive cluster: it turns ssl on for the whole server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use walhook::source::{Disposition, SourceState};

use crate::support::cluster::{exclusive_cluster, Exclusive};
use crate::support::source::{options, publish_items, spawn};
use crate::support::{Db, WAIT};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA, a server certificate for DNS:localhost, and an unrelated CA.
fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "other_ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=walhook test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    // The server runs as `postgres` when we are root; its key must be private to it.
    run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
    if unsafe { libc::geteuid() } == 0 {
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.join("server.key"))
            .arg(dir.join("server.crt")));
    }
}

/// The test's turn on the exclusive cluster with ssl on, and a database
/// with published items.
struct Pki {
    dir: PathBuf,
    db: Db,
    _exclusive: Exclusive,
}

/// Certificates made once per test binary in the exclusive cluster's
/// directory; ssl turned on for this test's turn (the turn's end resets it).
async fn pki(prefix: &str) -> Pki {
    static CERTIFICATES: OnceLock<PathBuf> = OnceLock::new();
    let exclusive = exclusive_cluster().await;
    let cluster = exclusive.cluster();
    let dir = tokio::task::spawn_blocking(move || {
        CERTIFICATES
            .get_or_init(|| {
                let dir = cluster.dir().join("tls");
                make_certificates(&dir);
                dir
            })
            .clone()
    })
    .await
    .unwrap();
    let postgres = Db::existing(cluster, "postgres");
    postgres
        .psql(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{0}/server.crt';
             ALTER SYSTEM SET ssl_key_file = '{0}/server.key';
             ALTER SYSTEM SET ssl = on;",
            dir.display()
        ))
        .await;
    tokio::task::spawn_blocking(move || cluster.reload())
        .await
        .unwrap()
        .expect("reload");
    assert_eq!(postgres.psql("SHOW ssl").await, "on");
    let db = Db::create(cluster, prefix).await;
    publish_items(&db).await;
    Pki {
        dir,
        db,
        _exclusive: exclusive,
    }
}

fn url(host: &str, db: &Db, params: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/{}?{params}",
        db.cluster().port(),
        db.name()
    )
}

/// Streams with `url` and returns whether the walsender's connection is encrypted.
async fn streams_encrypted(url: &str, slot: &str, db: &Db) -> bool {
    let src = spawn(options(url, slot));
    src.wait_state(SourceState::Streaming).await;
    let pid = db.active_pid(slot).await.expect("walsender");
    let ssl = db
        .psql(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}"))
        .await;
    src.stop().await.unwrap();
    ssl == "t"
}

async fn fails_fatally(url: &str, slot: &str) -> String {
    let src = spawn(options(url, slot));
    let err = tokio::time::timeout(WAIT, src.task)
        .await
        .expect("a TLS verification failure must not be retried forever")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.disposition(), Disposition::Fatal, "{err}");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_encrypt_without_verifying() {
    let pki = pki("src_tls").await;
    assert!(
        streams_encrypted(
            &url("127.0.0.1", &pki.db, "sslmode=require"),
            "s_require",
            &pki.db
        )
        .await
    );
    assert!(
        streams_encrypted(
            &url("127.0.0.1", &pki.db, "sslmode=prefer"),
            "s_prefer",
            &pki.db
        )
        .await
    );
    assert!(
        !streams_encrypted(
            &url("127.0.0.1", &pki.db, "sslmode=disable"),
            "s_disable",
            &pki.db
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_chain_and_host_name() {
    let pki = pki("src_tls").await;
    let ca = pki.dir.join("ca.pem");
    let ca = ca.display();
    let good = url(
        "localhost",
        &pki.db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert!(streams_encrypted(&good, "s_full_ok", &pki.db).await);

    // The certificate names localhost, not 127.0.0.1.
    let wrong_name = url(
        "127.0.0.1",
        &pki.db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let text = fails_fatally(&wrong_name, "s_full_name").await;
    assert!(
        text.contains("TLS") && text.contains("not valid for name"),
        "{text}"
    );

    let other = pki.dir.join("other_ca.pem");
    let wrong_ca = url(
        "localhost",
        &pki.db,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let text = fails_fatally(&wrong_ca, "s_full_ca").await;
    assert!(text.contains("UnknownIssuer"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_checks_the_chain_only() {
    let pki = pki("src_tls").await;
    let ca = pki.dir.join("ca.pem");
    let by_ip = url(
        "127.0.0.1",
        &pki.db,
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    assert!(streams_encrypted(&by_ip, "s_ca_ok", &pki.db).await);

    let other = pki.dir.join("other_ca.pem");
    let wrong_ca = url(
        "127.0.0.1",
        &pki.db,
        &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
    );
    let text = fails_fatally(&wrong_ca, "s_ca_bad").await;
    assert!(text.contains("UnknownIssuer"), "{text}");
}
