//! `http(...)` verifiers against an `https` judge: a local TLS server (rustls, on a thread)
//! whose certificate is signed by a CA made for the test (rcgen). The client refuses it with a
//! clear message by default, since no public root signed it, and scores through it when the
//! verifier names the CA's PEM file with `ca`.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use recap_plan::{Extractor, Verifier, VerifierSpec};
use recap_runtime::engine::graders::External;
use recap_runtime::engine::rewards::Judged;
use recap_runtime::train::verifiers::Outcome;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Map, Value};

mod common;

/// A CA, and a server certificate for 127.0.0.1 signed by it: the CA's PEM, and the server's
/// TLS configuration.
fn certificates() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    // The process's provider: ring, the only one this build has.
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// Serves `{"rewards": [1.0, ...]}` over TLS on a thread; gives the url. A connection whose
/// handshake fails (the client refused the certificate) is dropped.
fn judge(config: Arc<rustls::ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/score", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
            let Some(body) = common::http_request_body(&mut reader).filter(|b| !b.is_empty())
            else {
                continue;
            };
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n = request["items"].as_array().map_or(0, Vec::len);
            let text = json!({"rewards": vec![1.0; n]}).to_string();
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    url
}

fn verifier(url: &str, ca: Option<&str>, base: &Path) -> anyhow::Result<Option<External>> {
    let v = Verifier {
        name: "judge".into(),
        spec: VerifierSpec::Http {
            url: url.into(),
            timeout: 10.0,
            batch: 8,
            retries: 2,
            ca: ca.map(Into::into),
            extract: Extractor { steps: vec![] },
        },
    };
    External::new(&v, base, false)
}

fn items(fields: &Map<String, Value>) -> Vec<Judged<'_>> {
    ["1", "2"]
        .iter()
        .map(|c| Judged {
            id: "rows:0",
            prompt: "1+1=",
            completion: c,
            fields,
            tokens: 1,
        })
        .collect()
}

#[test]
fn an_https_judge_is_refused_unless_its_ca_is_named() {
    let (ca_pem, config) = certificates();
    let url = judge(config);
    let dir = tempfile::tempdir().unwrap();
    let fields = Map::new();

    // The Mozilla roots did not sign the test CA: the batch fails, saying why, untried again.
    let untrusted = verifier(&url, None, dir.path()).unwrap().unwrap();
    let (outcomes, failures) = untrusted.score(&items(&fields));
    assert_eq!(outcomes, [Outcome::Score(0.0), Outcome::Score(0.0)]);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("certificate is not trusted") && failures[0].contains("`ca = "),
        "{}",
        failures[0]
    );
    assert!(!failures[0].contains("tried"), "{}", failures[0]);

    // Named with `ca`, relative to the pipeline's directory, the CA is trusted.
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let trusted = verifier(&url, Some("ca.pem"), dir.path()).unwrap().unwrap();
    let (outcomes, failures) = trusted.score(&items(&fields));
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(outcomes, [Outcome::Score(1.0), Outcome::Score(1.0)]);
}

#[test]
fn a_ca_file_without_certificates_stops_the_run_naming_the_verifier() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let url = "https://127.0.0.1:9/score";
    for (file, words) in [
        ("empty.pem", "holds no `BEGIN CERTIFICATE` block"),
        ("gone.pem", "cannot be read"),
    ] {
        let err = verifier(url, Some(file), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("verifier `judge`: the `ca` file") && err.contains(words),
            "{err}"
        );
    }
}
