//! The S3 client over https (rustls with the ring provider): against a TLS server whose
//! self-signed certificate is trusted through `ca_file`, and refused without it.

use std::sync::Arc;

use obsbox_cluster::object_store::ObjectStoreExt;
use obsbox_cluster::object_store::path::Path;
use obsbox_cluster::{ObjectStoreConfig, Secret, StoreKind, open_store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server answering every request with the object `hello` (enough S3 for a GET).
async fn tls_server() -> (u16, String, tokio::task::JoinHandle<()>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let response = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\netag: \"e1\"\r\n\
                                last-modified: Tue, 15 Nov 1994 08:12:31 GMT\r\nconnection: close\r\n\r\nhello";
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ck.cert.pem(), task)
}

fn config(port: u16, ca_file: Option<std::path::PathBuf>) -> ObjectStoreConfig {
    ObjectStoreConfig {
        kind: StoreKind::S3,
        endpoint: Some(format!("https://localhost:{port}")),
        region: "garage".into(),
        bucket: Some("obsbox".into()),
        access_key_id: Some("GK1".into()),
        secret_access_key: Some(Secret::new("s")),
        ca_file,
        max_retries: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn https_with_a_private_ca() {
    let (port, pem, server) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();

    let store = open_store(&config(port, Some(ca))).unwrap();
    let got = store.get(&Path::from("x")).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"hello");

    // Without the CA the certificate is not trusted: an error, not a silent success.
    let store = open_store(&config(port, None)).unwrap();
    let err = store.get(&Path::from("x")).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate") || err.contains("invalid peer"), "{err}");
    server.abort();
}

#[tokio::test]
async fn failover_endpoint_when_the_first_is_unreachable() {
    let (port, pem, server) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    // A port nobody listens on: bind, note it, release it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(dead, Some(ca));
    cfg.failover_endpoints = vec![format!("https://localhost:{port}")];
    let store = open_store(&cfg).unwrap();
    for _ in 0..3 {
        let got = store.get(&Path::from("x")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");
    }
    // Without the failover endpoint: an error.
    cfg.failover_endpoints.clear();
    assert!(open_store(&cfg).unwrap().get(&Path::from("x")).await.is_err());
    server.abort();
}
