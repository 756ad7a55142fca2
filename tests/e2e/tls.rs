//! TLS on every listener, with real clients: the Python OpenTelemetry SDK's OTLP/gRPC and
//! OTLP/HTTP exporters (configured through `OTEL_EXPORTER_OTLP_CERTIFICATE` and the client
//! certificate variables, see `tests/python/export_tls.py`) and a rustls HTTP client for the
//! UI/API. The CA, server and client certificates are generated here with rcgen.
//!
//! Python comes from `$OBSBOX_TEST_PYTHON`, else `<workspace>/.venv/bin/python`.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{SEARCHABLE, blocking, logs_of_service, spans_of_service, wait_until_async};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::ServerName;

/// A certificate authority that signs server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Extensions as a real CA sets them, so strict verifiers (Python 3.13's
        // VERIFY_X509_STRICT) accept the chain: key usages here, the key identifier on leaves.
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate and its key, as PEM.
    fn sign(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// PEM files of one test: server chain and key, the CA that signed it, client certificates.
struct Pki {
    dir: PathBuf,
    server_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    /// (certificate, key) signed by `client_ca`.
    good_client: (PathBuf, PathBuf),
    /// (certificate, key) signed by a CA obsbox does not trust.
    rogue_client: (PathBuf, PathBuf),
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn pki(dir: &Path) -> Pki {
    let server_ca = Ca::new("obsbox test server ca");
    let client_ca = Ca::new("obsbox test client ca");
    let rogue_ca = Ca::new("some other ca");
    let (cert, key) = server_ca.sign("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (good_cert, good_key) = client_ca.sign("sdk-client", ExtendedKeyUsagePurpose::ClientAuth);
    let (rogue_cert, rogue_key) = rogue_ca.sign("sdk-client", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        dir: dir.to_path_buf(),
        server_ca: write(dir, "server-ca.pem", &server_ca.pem),
        // The chain file: leaf first; the CA certificate after it is allowed and ignored by clients.
        cert: write(dir, "chain.pem", &format!("{cert}{}", server_ca.pem)),
        key: write(dir, "key.pem", &key),
        client_ca: write(dir, "client-ca.pem", &client_ca.pem),
        good_client: (write(dir, "good.crt", &good_cert), write(dir, "good.key", &good_key)),
        rogue_client: (write(dir, "rogue.crt", &rogue_cert), write(dir, "rogue.key", &rogue_key)),
    }
}

async fn start(pki: &Pki, client_ca: bool) -> obsbox::Obsbox {
    let mut config = common::test_config(&pki.dir.join("data"));
    config.tls.cert = Some(pki.cert.clone());
    config.tls.key = Some(pki.key.clone());
    config.tls.client_ca = client_ca.then(|| pki.client_ca.clone());
    common::start_obsbox_with(config).await
}

/// The SDK exporting to obsbox; `client` is an optional (certificate, key) pair.
fn sdk(obsbox: &obsbox::Obsbox, pki: &Pki, service: &str, scheme: &str, client: Option<&(PathBuf, PathBuf)>) -> Child {
    let script = common::workspace_root().join("tests/python/export_tls.py");
    let mut cmd = Command::new(common::python());
    cmd.arg(script)
        .args(["--grpc", &obsbox.otlp_grpc_addr().expect("an OTLP listener").to_string()])
        .args(["--http", &obsbox.otlp_http_addr().expect("an OTLP listener").to_string()])
        .args(["--service", service, "--scheme", scheme])
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.server_ca)
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
        .env_remove("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
        .env_remove("OTEL_EXPORTER_OTLP_CLIENT_KEY")
        // requests lets these override the exporter's CA file (psf/requests#3829); a user who
        // sets them globally has to unset them for the exporter, as this does.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((cert, key)) = client {
        cmd.env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert).env("OTEL_EXPORTER_OTLP_CLIENT_KEY", key);
    }
    cmd.spawn().expect("run tests/python/export_tls.py")
}

/// Waits for the script and checks its result lines (`grpc ok`, `http failed`, ...).
async fn expect(child: Child, expected: [&str; 2], what: &str) {
    let out = blocking(move || child.wait_with_output().unwrap()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected, "{what}; the SDK's log:\n{}", String::from_utf8_lossy(&out.stderr));
}

async fn assert_stored(obsbox: &obsbox::Obsbox, service: &str) {
    let store = obsbox.store().expect("a local store");
    let service = service.to_string();
    let found = wait_until_async(SEARCHABLE, move || {
        !spans_of_service(&store, &service).is_empty() && !logs_of_service(&store, &service).is_empty()
    })
    .await;
    assert!(found, "spans and logs exported over TLS are stored");
}

fn assert_nothing_stored(obsbox: &obsbox::Obsbox, service: &str) {
    let store = obsbox.store().expect("a local store");
    assert!(spans_of_service(&store, service).is_empty(), "{service}: refused spans were stored");
    assert!(logs_of_service(&store, service).is_empty(), "{service}: refused logs were stored");
}

/// GET over TLS (HTTP/1.1), trusting only `ca`.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path).header("host", "localhost").body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exports_over_tls_and_the_ui_answers_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let obsbox = start(&pki, false).await;

    let over_tls = sdk(&obsbox, &pki, "tls-ok", "https", None);
    let plain = sdk(&obsbox, &pki, "tls-plain", "http", None);
    expect(over_tls, ["grpc ok", "http ok"], "exports over TLS").await;
    expect(plain, ["grpc failed", "http failed"], "plain text to a TLS port fails").await;
    assert_stored(&obsbox, "tls-ok-grpc").await;
    assert_stored(&obsbox, "tls-ok-http").await;
    assert_nothing_stored(&obsbox, "tls-plain-grpc");
    assert_nothing_stored(&obsbox, "tls-plain-http");

    let (status, body) = https_get(obsbox.http_addr(), &pki.server_ca, "/api/services").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tls-ok-grpc"), "{body}");
    // Plain HTTP to the UI port gets no HTTP answer.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", obsbox.http_addr())).send().await;
    assert!(plain.is_err(), "plain http to the https port: {plain:?}");
    // A client that does not trust the server's CA refuses it.
    let e = https_get(obsbox.http_addr(), &pki.client_ca, "/healthz").await.unwrap_err();
    assert!(e.contains("handshake"), "{e}");
    obsbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_ca_ingest_needs_a_certificate_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let obsbox = start(&pki, true).await;

    let good = sdk(&obsbox, &pki, "mtls-good", "https", Some(&pki.good_client));
    let none = sdk(&obsbox, &pki, "mtls-none", "https", None);
    let rogue = sdk(&obsbox, &pki, "mtls-rogue", "https", Some(&pki.rogue_client));
    expect(good, ["grpc ok", "http ok"], "a certificate from the client CA").await;
    expect(none, ["grpc failed", "http failed"], "no client certificate").await;
    expect(rogue, ["grpc failed", "http failed"], "a certificate from another CA").await;
    assert_stored(&obsbox, "mtls-good-grpc").await;
    assert_stored(&obsbox, "mtls-good-http").await;
    for service in ["mtls-none-grpc", "mtls-none-http", "mtls-rogue-grpc", "mtls-rogue-http"] {
        assert_nothing_stored(&obsbox, service);
    }

    // The UI port does not ask for a client certificate.
    let (status, body) = https_get(obsbox.http_addr(), &pki.server_ca, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    obsbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_tls_files_stop_start_up_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut config = common::test_config(&dir.path().join("data"));
    config.tls.cert = Some(pki.cert.clone());
    config.tls.key = Some(pki.good_client.1.clone());
    let e = format!("{:#}", obsbox::Obsbox::start(config.clone()).await.err().expect("a mismatched key is refused"));
    assert!(e.contains("good.key") && e.contains("does not go with the certificate"), "{e}");
    config.tls.key = Some(dir.path().join("nope.pem"));
    let e = format!("{:#}", obsbox::Obsbox::start(config).await.err().expect("a missing key is refused"));
    assert!(e.contains("nope.pem"), "{e}");
}
