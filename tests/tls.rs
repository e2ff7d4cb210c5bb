//! Kafka over TLS, with and without SASL, against an in-test TLS endpoint.
//!
//! librdkafka's mock cluster does not speak TLS and the suite's Apache Kafka listens in
//! plaintext (a TLS listener on it is not set up yet). What these tests prove instead, with the real binary: librdkafka is built with
//! TLS (a client with `security.protocol = "SSL"` or `"SASL_SSL"` is created and completes a
//! TLS handshake against a server whose certificate only the test CA signs, host name
//! checked), and a wrong CA fails with librdkafka's own reason in `check-config --probe`'s
//! answer. The server closes the connection after the handshake, so the probe itself fails:
//! that part of the answer is not what is tested.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");

/// A TLS endpoint on a free loopback port: counts completed handshakes and keeps the errors
/// of failed ones.
struct TlsEndpoint {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
}

fn tls_endpoint() -> TlsEndpoint {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(format!("{TLS_DIR}/server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(format!("{TLS_DIR}/server.key")).expect("server.key");
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (h, e) = (Arc::clone(&handshakes), Arc::clone(&errors));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, h, e) = (acceptor.clone(), Arc::clone(&h), Arc::clone(&e));
                tokio::spawn(async move {
                    match acceptor.accept(sock).await {
                        Ok(mut tls) => {
                            h.fetch_add(1, Ordering::SeqCst);
                            // Read the client's first request, then hang up.
                            let mut buf = [0u8; 64];
                            let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                        }
                        Err(err) => e.lock().expect("lock").push(err.to_string()),
                    }
                });
            }
        });
    });
    TlsEndpoint {
        port,
        handshakes,
        errors,
    }
}

/// `check-config --probe` with these `[kafka.properties]`; its whole output.
fn probe(dir: &Path, port: u16, properties: &str) -> String {
    let cfg = dir.join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[streams]]
name = "pumps"
topic = "sensors.pumps"
features = ["vibration"]

[kafka]
brokers = "localhost:{port}"
dead_letter_topic = ""

[kafka.properties]
{properties}

[influxdb]
url = "http://127.0.0.1:9"
"#
        ),
    )
    .expect("config");
    let o = Command::new(env!("CARGO_BIN_EXE_sensorcast"))
        .args(["check-config", "--probe", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "off")
        .output()
        .expect("check-config");
    let mut out = String::from_utf8_lossy(&o.stdout).to_string();
    out.push_str(&String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn kafka_over_tls_completes_the_handshake_and_a_wrong_ca_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = tls_endpoint();
    let ca = format!("{TLS_DIR}/ca.pem");

    // TLS with the CA that signed the endpoint's certificate (host name verified: the
    // certificate names localhost).
    let out = probe(
        dir.path(),
        server.port,
        &format!("\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{ca}\"\n"),
    );
    assert!(
        server.handshakes.load(Ordering::SeqCst) >= 1,
        "no TLS handshake completed: {out}\n{:?}",
        server.errors.lock().expect("lock")
    );

    // SASL_SSL with SCRAM: TLS first, then the SASL exchange (which this endpoint cuts).
    let before = server.handshakes.load(Ordering::SeqCst);
    let out = probe(
        dir.path(),
        server.port,
        &format!(
            "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"sensorcast\"\n\"sasl.password\" = \"not-a-secret\"\n\"ssl.ca.location\" = \"{ca}\"\n"
        ),
    );
    assert!(
        server.handshakes.load(Ordering::SeqCst) > before,
        "SASL_SSL: no TLS handshake completed: {out}"
    );
    assert!(
        !out.contains("not-a-secret"),
        "the password is never printed: {out}"
    );

    // A CA that did not sign the endpoint's certificate: the probe fails and says why.
    let other_ca = dir.path().join("other-ca.pem");
    let mut pem = String::new();
    std::fs::File::open(format!("{TLS_DIR}/server.pem"))
        .expect("server.pem")
        .read_to_string(&mut pem)
        .expect("read");
    // The server certificate itself is no CA: nothing it is given as a CA can verify the chain.
    std::fs::write(&other_ca, pem).expect("other CA");
    let before = server.handshakes.load(Ordering::SeqCst);
    let out = probe(
        dir.path(),
        server.port,
        &format!(
            "\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
            other_ca.display()
        ),
    );
    assert_eq!(
        server.handshakes.load(Ordering::SeqCst),
        before,
        "a handshake with the wrong CA must not complete"
    );
    assert!(
        out.contains("FAIL  kafka") && out.contains("certificate verify failed"),
        "the probe names the TLS failure: {out}"
    );
}

#[test]
fn a_mechanism_librdkafka_lacks_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = probe(
        dir.path(),
        9,
        "\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"GSSAPI\"\n",
    );
    assert!(
        out.contains("FAIL  kafka: cannot create a Kafka client") && out.contains("GSSAPI"),
        "{out}"
    );
}
