#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! HTTPS: a certificate signed by a test CA (rustls refuses a bare self-signed one), a
//! rustls client that trusts that CA, plain HTTP refused on the TLS port, and the restic
//! client over `rest:https://` with `--cacert`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{sha256_hex, Server};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// Writes ca.pem, cert.pem and key.pem for 127.0.0.1 into `dir`.
fn make_certs(dir: &Path) {
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
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// One HTTPS request trusting only the test CA; the status and body.
#[allow(deprecated)]
fn https(addr: &str, ca: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(body).unwrap();
    let mut raw = Vec::new();
    // A peer that closes without close_notify is an error in rustls; what was read counts.
    let _ = tls.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&raw[..end])
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, raw[end + 4..].to_vec())
}

#[test]
fn https_with_a_certificate_from_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca = dir.path().join("ca.pem");
    let s = Server::start(
        &dir.path().join("st"),
        &[
            "--no-auth",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(https(&s.addr, &ca, "GET", "/healthz", b"").0, 200);
    let body = b"over tls";
    let path = format!("/t/data/{}", sha256_hex(body));
    assert_eq!(https(&s.addr, &ca, "POST", &path, body).0, 200);
    assert_eq!(https(&s.addr, &ca, "GET", &path, b""), (200, body.to_vec()));
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(s
        .req("GET", "/healthz")
        .try_send()
        .is_none_or(|r| r.status != 200));

    // SIGHUP reloads the certificate; a broken one keeps the old in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(https(&s.addr, &ca, "GET", "/healthz", b"").0, 200);

    // The restic client over HTTPS.
    make_certs(dir.path());
    let Some(restic) = common::need_program("restic") else {
        return;
    };
    let s = Server::start(
        &dir.path().join("st2"),
        &[
            "--no-auth",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    for args in [&["init"][..], &["snapshots"][..]] {
        let out = std::process::Command::new(&restic)
            .arg("--cacert")
            .arg(dir.path().join("ca.pem"))
            .arg("-r")
            .arg(format!("rest:https://{}/tls/", s.addr))
            .args(args)
            .env("RESTIC_PASSWORD", "pw")
            .env("RESTIC_CACHE_DIR", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn tls_needs_both_files_that_hold_what_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "nothing").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--storage"])
            .arg(dir.path().join("st"))
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    let b = bad.to_str().unwrap();
    assert_eq!(run(&["--tls-cert", b]), Some(2));
    assert_eq!(run(&["--tls-cert", b, "--tls-key", b]), Some(1));
}
