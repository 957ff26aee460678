//! The same server over TLS (wss:// and https://) with a certificate made by the test.

use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn wss_and_https_work_with_a_configured_certificate() {
    herald::http::tls::install_crypto_provider();
    let dir = TempDir::new();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = ck.cert.pem();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let mut cfg = test_config(&dir);
    cfg.tls.cert_file = Some(cert_path);
    cfg.tls.key_file = Some(key_path);
    let s = TestServer::start_cfg(cfg, dir).await;
    assert_eq!(s.node().scheme(), "https");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client_cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url = format!(
        "wss://localhost:{}/ws?token={}",
        s.addr.port(),
        s.token("1")
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let hello = next_json_tls(&mut ws).await;
    assert_eq!(hello["type"], "connected");

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", s.addr)
        .build()
        .unwrap();
    let res = https
        .post(format!("https://localhost:{}/api/publish", s.addr.port()))
        .bearer_auth(&s.api_key)
        .json(&json!({"all": true, "data": "over tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(next_json_tls(&mut ws).await["data"], "over tls");

    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    s.shutdown().await;
}

async fn next_json_tls<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                return serde_json::from_str(&t).unwrap()
            }
            _ => continue,
        }
    }
}
