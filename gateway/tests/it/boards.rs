//! Invocations between boards of a cluster: board A's provider sends a call to board B
//! (`Upstream::Board`), A proxies it over TLS (mutual, under a test CA) to B's board listener,
//! and B answers from its own replica (the fixture function) without sending it on.

use std::net::SocketAddr;
use std::sync::Arc;

use bramble_gateway::provider::BoardAddr;
use http::StatusCode;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use crate::common::*;

/// A test CA and what it signs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "bramble test cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = ca_params().self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(ca_params(), key),
        }
    }

    /// A board's certificate and key (PEM), for 127.0.0.1, server and client.
    fn board(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }

    /// A board listener's TLS: client certificates under this CA asked for, not required.
    fn server(&self, (cert, key): &(String, String)) -> Arc<rustls::ServerConfig> {
        let provider = bramble_base::tls::provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                chain(cert),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }

    /// A board's client TLS (showing `board`), or a stranger's that shows none.
    fn client(&self, board: Option<&(String, String)>) -> rustls::ClientConfig {
        let builder = rustls::ClientConfig::builder_with_provider(bramble_base::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots());
        let mut config = match board {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    chain(cert),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        // As the cluster's own client configuration does.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

fn chain(cert: &str) -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()]
}

/// Board B: a gateway whose function is the fixture, with its board listener; and board A,
/// whose provider sends every call of `fn` to B.
struct TwoBoards {
    a: Harness,
    b: Harness,
    b_listener: SocketAddr,
    ca: Ca,
    _fixture: Fixture,
}

async fn two_boards(a_has_tls: bool) -> TwoBoards {
    let ca = Ca::new();
    let fixture = Fixture::start().await;
    let b = Harness::start(MemProvider::new(Some(fixture.addr))).await;
    b.provider.add_function("fn", "openfaas-fn");
    // A stale route on B pointing back to A must not make a loop: B answers itself.
    b.provider.board.lock().unwrap().replace(BoardAddr {
        name: "a".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_listener = listener.local_addr().unwrap();
    let gateway = Arc::clone(&b.gateway);
    let tls = ca.server(&ca.board("b"));
    tokio::spawn(async move {
        gateway
            .serve_boards(listener, tls, axum::Router::new(), std::future::pending())
            .await
    });

    let a = Harness::start(MemProvider::new(None)).await;
    a.provider.add_function("fn", "openfaas-fn");
    a.provider.board.lock().unwrap().replace(BoardAddr {
        name: "b".into(),
        addr: b_listener,
    });
    if a_has_tls {
        a.gateway.set_board_tls(ca.client(Some(&ca.board("a"))));
    }
    TwoBoards {
        a,
        b,
        b_listener,
        ca,
        _fixture: fixture,
    }
}

#[tokio::test]
async fn a_call_through_another_board_is_answered_by_the_board_that_runs_it() {
    let boards = two_boards(true).await;
    let r = boards
        .a
        .send(
            "POST",
            "/function/fn/headers?x=1",
            &[
                ("host", "pi.local:8080"),
                ("x-call-id", "call-1"),
                ("x-custom", "kept"),
            ],
            "body",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("POST /headers?x=1 HTTP/1.1"));
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(": ")).collect();
    let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    // What the function sees is what the client sent, as if it ran on board A.
    assert_eq!(get("x-forwarded-host"), Some("pi.local:8080"));
    assert_eq!(
        get("x-forwarded-for"),
        Some("127.0.0.1"),
        "the client's, once"
    );
    assert_eq!(get("x-call-id"), Some("call-1"));
    assert_eq!(get("x-custom"), Some("kept"));
    assert_eq!(r.header("x-call-id"), Some("call-1"));
    assert!(r.header("x-fixture-pid").is_some());
    // A asked its provider where to go; B answered from its own replicas only.
    assert!(
        boards
            .a
            .provider
            .calls()
            .contains(&"endpoint fn openfaas-fn".to_owned())
    );
    let b_calls = boards.b.provider.calls();
    assert!(
        b_calls.contains(&"endpoint_here fn openfaas-fn".to_owned()),
        "{b_calls:?}"
    );
    assert!(
        !b_calls.contains(&"endpoint fn openfaas-fn".to_owned()),
        "{b_calls:?}"
    );

    // Bodies stream both ways, whole: 8 MiB echoed back.
    let big = vec![b'x'; 8 << 20];
    let r = boards
        .a
        .send("POST", "/function/fn/echo", &[], big.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big);

    // The function's own answer passes through the hop unchanged, errors included.
    let r = boards
        .a
        .send("GET", "/function/fn/status?code=418", &[], "")
        .await;
    assert_eq!(r.status.as_u16(), 418, "{}", r.text());
}

#[tokio::test]
async fn the_board_path_refuses_a_peer_without_the_clusters_certificate() {
    let boards = two_boards(true).await;
    let url = format!(
        "https://{}/cluster/function/fn.openfaas-fn/headers",
        boards.b_listener
    );
    // A stranger on the LAN: trusts the CA (or not), shows no certificate.
    let stranger = reqwest::Client::builder()
        .use_preconfigured_tls(boards.ca.client(None))
        .build()
        .unwrap();
    let r = stranger.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let text = r.text().await.unwrap();
    assert!(text.contains("only boards of the cluster"), "{text}");
    assert!(
        !boards
            .b
            .provider
            .calls()
            .iter()
            .any(|c| c.starts_with("endpoint")),
        "nothing was invoked"
    );

    // A board of the cluster gets through; a bare name (no namespace) is refused.
    let board = reqwest::Client::builder()
        .use_preconfigured_tls(boards.ca.client(Some(&boards.ca.board("c"))))
        .build()
        .unwrap();
    let r = board.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bare = format!("https://{}/cluster/function/fn/headers", boards.b_listener);
    let r = board.get(&bare).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_board_without_board_tls_says_why_it_cannot_reach_the_other() {
    let boards = two_boards(false).await;
    let r = boards.a.send("GET", "/function/fn/", &[], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.text().contains("runs on board b") && r.text().contains("no board-to-board TLS"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_board_that_does_not_answer_is_a_502_naming_it() {
    let boards = two_boards(true).await;
    // Nothing listens there any more.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    boards.a.provider.board.lock().unwrap().replace(BoardAddr {
        name: "b9".into(),
        addr,
    });
    let r = boards.a.send("GET", "/function/fn/", &[], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.text()
            .contains(&format!("unreachable at board b9 ({addr})")),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_call_a_board_refuses_goes_where_the_provider_says_next() {
    let boards = two_boards(true).await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    // A has a replica of its own too, to go to once the board is routed around.
    let fixture = Fixture::start().await;
    boards
        .a
        .provider
        .upstream
        .lock()
        .unwrap()
        .replace(fixture.addr);
    let dead_board = || {
        boards.a.provider.board.lock().unwrap().replace(BoardAddr {
            name: "b9".into(),
            addr,
        });
    };
    dead_board();
    let r = boards
        .a
        .send("POST", "/function/fn/echo", &[], "kept body")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "kept body", "the body was kept and sent again");
    let calls = boards.a.provider.calls();
    assert!(calls.contains(&"unreachable b9".to_owned()), "{calls:?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "endpoint fn openfaas-fn")
            .count(),
        2,
        "asked again where to go: {calls:?}"
    );

    // A body too long to keep streams once: the provider hears of the board, the client gets
    // the 502.
    dead_board();
    let big = vec![b'x'; 100 * 1024];
    let r = boards.a.send("POST", "/function/fn/echo", &[], big).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("unreachable at board b9"), "{}", r.text());
    assert_eq!(
        boards
            .a
            .provider
            .calls()
            .iter()
            .filter(|c| *c == "unreachable b9")
            .count(),
        2
    );
}
