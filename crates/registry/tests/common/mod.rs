//! The test harness: the built-in registry on a free loopback port, over a real SQLite file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Method;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tributary_registry::{serve, Registry, ServerAuth, SqliteRegistryStore};

/// A running registry.
pub struct Server {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Starts a registry over `db` on a free port.
    pub async fn start(db: &Path) -> Server {
        Self::start_with(db, ServerAuth::default()).await
    }

    /// … asking for credentials.
    pub async fn start_with(db: &Path, auth: ServerAuth) -> Server {
        let store = SqliteRegistryStore::open(db).unwrap();
        let registry = Arc::new(Registry::open(Box::new(store)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, registry, auth, async move {
            let _ = rx.await;
        }));
        Server {
            url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops it and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A temporary folder with the registry's database.
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    pub fn db(&self) -> PathBuf {
        self.0.path().join("registry.db")
    }
}

/// Raw HTTP: (status, content type, JSON body).
pub async fn http(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ct, body)
}
