//! Benchmark: latency of a small GET straight to the fixture function versus through the
//! gateway's `/function` proxy, sequential requests over keep-alive connections.
//!
//! ```text
//! cargo run --release -p bramble-gateway --example proxy_overhead [-- REQUESTS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bramble_gateway::provider::{
    Endpoint, LogStream, Provider, ProviderError, ProviderResult, Upstream, UsageSample,
};
use bramble_gateway::types::{
    FunctionDeployment, FunctionNamespace, FunctionStatus, LogRequest, ProviderInfo, Secret,
};
use bramble_gateway::{Credentials, Gateway, GatewayConfig};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One function, always ready at `addr`.
struct Static {
    addr: SocketAddr,
}

fn no<T>() -> ProviderResult<T> {
    Err(ProviderError::Internal("not in this benchmark".into()))
}

impl Provider for Static {
    async fn list_functions(&self, _: &str) -> ProviderResult<Vec<FunctionStatus>> {
        Ok(Vec::new())
    }
    async fn get_function(
        &self,
        _: &str,
        _: &str,
        _: bool,
    ) -> ProviderResult<Option<FunctionStatus>> {
        Ok(None)
    }
    async fn deploy(&self, _: FunctionDeployment) -> ProviderResult<()> {
        no()
    }
    async fn update(&self, _: FunctionDeployment) -> ProviderResult<()> {
        no()
    }
    async fn delete(&self, _: &str, _: &str) -> ProviderResult<()> {
        no()
    }
    async fn scale(&self, _: &str, _: &str, _: u64) -> ProviderResult<()> {
        no()
    }
    async fn list_namespaces(&self) -> ProviderResult<Vec<String>> {
        Ok(vec!["openfaas-fn".into()])
    }
    async fn get_namespace(&self, _: &str) -> ProviderResult<Option<FunctionNamespace>> {
        Ok(None)
    }
    async fn create_namespace(&self, _: FunctionNamespace) -> ProviderResult<()> {
        no()
    }
    async fn update_namespace(&self, _: FunctionNamespace) -> ProviderResult<()> {
        no()
    }
    async fn delete_namespace(&self, _: &str) -> ProviderResult<()> {
        no()
    }
    async fn list_secrets(&self, _: &str) -> ProviderResult<Vec<Secret>> {
        Ok(Vec::new())
    }
    async fn put_secret(&self, _: Secret) -> ProviderResult<()> {
        no()
    }
    async fn delete_secret(&self, _: &str, _: &str) -> ProviderResult<()> {
        no()
    }
    async fn logs(&self, _: LogRequest) -> ProviderResult<LogStream> {
        no()
    }
    async fn list_images(&self) -> ProviderResult<Vec<bramble_gateway::types::ImageSummary>> {
        Ok(Vec::new())
    }
    async fn import_images(
        &self,
        _: &std::path::Path,
        _: Option<&str>,
    ) -> ProviderResult<Vec<String>> {
        Ok(Vec::new())
    }
    async fn remove_image(&self, _: &str) -> ProviderResult<()> {
        Ok(())
    }
    fn info(&self) -> ProviderInfo {
        ProviderInfo::default()
    }
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }
    async fn endpoint(&self, _: &str, _: &str, _: Duration) -> ProviderResult<Endpoint> {
        Ok(Endpoint {
            upstream: Upstream::Replica(self.addr),
            timeout: Duration::from_secs(30),
            in_flight: None,
        })
    }
    async fn usage(&self) -> HashMap<(String, String), UsageSample> {
        HashMap::new()
    }
}

async fn measure(client: &Client<HttpConnector, Body>, url: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client
            .request(http::Request::get(url).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.into_body().collect().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(2000, |a| a.parse().expect("REQUESTS is a number"));
    let binary = bramble_testkit::fixture_binary().expect("fixture binary");
    let mut child = tokio::process::Command::new(binary)
        .env("PORT", "0")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start fixture-fn");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next_line().await.unwrap().expect("fixture-fn exited");
        if let Some(port) = line.strip_prefix("fixture-fn listening on :") {
            break port.parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let fixture = SocketAddr::from(([127, 0, 0, 1], port));

    let dir = tempfile::tempdir().unwrap();
    let config = GatewayConfig {
        credentials: Credentials {
            user: "admin".into(),
            password: "bench".into(),
        },
        queue_dir: dir.path().to_path_buf(),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(Arc::new(Static { addr: fixture }), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let g = Arc::clone(&gateway);
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });

    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let direct_url = format!("http://{fixture}/");
    let proxied_url = format!("http://{gateway_addr}/function/bench");
    measure(&client, &direct_url, 200).await;
    measure(&client, &proxied_url, 200).await;
    let direct = measure(&client, &direct_url, n).await;
    let proxied = measure(&client, &proxied_url, n).await;

    println!("{n} sequential GETs of a 22-byte body, keep-alive, loopback");
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "path", "p50 µs", "p99 µs", "max µs"
    );
    for (name, t) in [
        ("direct to fixture", &direct),
        ("through the gateway", &proxied),
    ] {
        println!(
            "{name:<22} {:>10.0} {:>10.0} {:>10.0}",
            pct(t, 0.5),
            pct(t, 0.99),
            pct(t, 1.0)
        );
    }
    println!(
        "{:<22} {:>10.0} {:>10.0}",
        "gateway overhead",
        pct(&proxied, 0.5) - pct(&direct, 0.5),
        pct(&proxied, 0.99) - pct(&direct, 0.99)
    );
}
