//! Prometheus metrics of a brick, served as text on `--metrics-listen`
//! (`GET /metrics`): space of the brick, limit and usage of every PV, Raft
//! role and heal backlog per member (on the leader), and a latency histogram
//! per gRPC method, measured by a tower layer around the gRPC server.
//!
//! The HTTP side is a few lines over a TCP socket on purpose: one fixed
//! resource, a bounded request, no keep-alive.

use crate::raft::node::RaftNode;
use crate::store::Store;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Most distinct methods tracked: paths come off the wire.
const MAX_METHODS: usize = 128;
/// Largest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request latencies per gRPC method.
#[derive(Default)]
pub struct Latencies {
    by_method: Mutex<BTreeMap<String, Histogram>>,
}

impl Latencies {
    pub fn observe(&self, path: &str, took: Duration) {
        if !path.starts_with("/kadalu.") {
            return;
        }
        let mut map = self.by_method.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(path) && map.len() >= MAX_METHODS {
            return;
        }
        let h = map.entry(path.to_string()).or_default();
        let s = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    fn render(&self, out: &mut String) {
        let map = self
            .by_method
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        out.push_str("# HELP kadalu_request_duration_seconds Time to answer a gRPC request.\n");
        out.push_str("# TYPE kadalu_request_duration_seconds histogram\n");
        for (method, h) in map {
            let m = escape(&method);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "kadalu_request_duration_seconds_bucket{{method=\"{m}\",le=\"{le}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "kadalu_request_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "kadalu_request_duration_seconds_sum{{method=\"{m}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "kadalu_request_duration_seconds_count{{method=\"{m}\"}} {}",
                h.count
            );
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Tower layer recording each request's latency.
#[derive(Clone)]
pub struct LatencyLayer(pub Arc<Latencies>);

impl<S> tower::Layer<S> for LatencyLayer {
    type Service = Latency<S>;
    fn layer(&self, inner: S) -> Latency<S> {
        Latency {
            inner,
            latencies: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Latency<S> {
    inner: S,
    latencies: Arc<Latencies>,
}

impl<S, B> tower::Service<http::Request<B>> for Latency<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = Instant::now();
        let latencies = self.latencies.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            latencies.observe(&path, start.elapsed());
            r
        })
    }
}

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub store: Arc<Store>,
    pub raft: Option<Arc<RaftNode>>,
    pub latencies: Arc<Latencies>,
}

impl Sources {
    /// The metrics page, gathered now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE kadalu_brick_up gauge\nkadalu_brick_up 1\n");
        if let Ok(fs) = self.store.statfs() {
            let fr = u64::from(fs.frsize.max(1));
            let _ = writeln!(
                out,
                "# TYPE kadalu_brick_capacity_bytes gauge\nkadalu_brick_capacity_bytes {}",
                fs.blocks * fr
            );
            let _ = writeln!(
                out,
                "# TYPE kadalu_brick_free_bytes gauge\nkadalu_brick_free_bytes {}",
                fs.bavail * fr
            );
        }
        if let Ok(pvs) = self.store.pvs() {
            out.push_str("# TYPE kadalu_pv_limit_bytes gauge\n# TYPE kadalu_pv_used_bytes gauge\n");
            out.push_str(
                "# TYPE kadalu_pv_limit_inodes gauge\n# TYPE kadalu_pv_used_inodes gauge\n",
            );
            for p in pvs {
                let n = escape(&p.name);
                let _ = writeln!(out, "kadalu_pv_limit_bytes{{pv=\"{n}\"}} {}", p.byte_limit);
                let _ = writeln!(out, "kadalu_pv_used_bytes{{pv=\"{n}\"}} {}", p.bytes_used);
                let _ = writeln!(
                    out,
                    "kadalu_pv_limit_inodes{{pv=\"{n}\"}} {}",
                    p.inode_limit
                );
                let _ = writeln!(out, "kadalu_pv_used_inodes{{pv=\"{n}\"}} {}", p.inodes_used);
            }
        }
        if let Some(node) = &self.raft {
            let m = node.raft.metrics().borrow().clone();
            let leader = m.state == openraft::ServerState::Leader;
            let _ = writeln!(
                out,
                "# TYPE kadalu_raft_leader gauge\nkadalu_raft_leader {}",
                u8::from(leader)
            );
            let _ = writeln!(
                out,
                "# TYPE kadalu_raft_term gauge\nkadalu_raft_term {}",
                m.current_term
            );
            if leader {
                let last = m.last_log_index.unwrap_or(0);
                out.push_str("# HELP kadalu_heal_pending_entries Log entries a member lacks.\n");
                out.push_str("# TYPE kadalu_heal_pending_entries gauge\n");
                let replication = m.replication.clone().unwrap_or_default();
                for (id, addr) in node.members() {
                    let matched = if id == node.id {
                        last
                    } else {
                        replication
                            .get(&id)
                            .cloned()
                            .flatten()
                            .map_or(0, |l| l.index)
                    };
                    let _ = writeln!(
                        out,
                        "kadalu_heal_pending_entries{{member=\"{}\"}} {}",
                        escape(&addr),
                        last.saturating_sub(matched)
                    );
                }
            }
        }
        self.latencies.render(&mut out);
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, sources: Sources) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(IO_TIMEOUT, async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let wanted = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
            let (status, body) = if wanted {
                let s = sources.clone();
                match tokio::task::spawn_blocking(move || s.render()).await {
                    Ok(body) => ("200 OK", body),
                    Err(_) => ("500 Internal Server Error", String::new()),
                }
            } else {
                ("404 Not Found", "only /metrics is served\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(IO_TIMEOUT, sock.write_all(reply.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_paths_bounded() {
        let l = Latencies::default();
        l.observe("/kadalu.brick.v1.Brick/Lookup", Duration::from_micros(300));
        l.observe("/kadalu.brick.v1.Brick/Lookup", Duration::from_millis(30));
        l.observe("/not/ours", Duration::from_millis(1));
        for i in 0..500 {
            l.observe(&format!("/kadalu.x/{i}"), Duration::from_millis(1));
        }
        let mut out = String::new();
        l.render(&mut out);
        assert!(out.contains(
            "kadalu_request_duration_seconds_bucket{method=\"/kadalu.brick.v1.Brick/Lookup\",le=\"0.0005\"} 1"
        ));
        assert!(out.contains(
            "kadalu_request_duration_seconds_bucket{method=\"/kadalu.brick.v1.Brick/Lookup\",le=\"0.05\"} 2"
        ));
        assert!(out.contains(
            "kadalu_request_duration_seconds_count{method=\"/kadalu.brick.v1.Brick/Lookup\"} 2"
        ));
        assert!(!out.contains("/not/ours"));
        let methods = out.matches("_count{").count();
        assert_eq!(methods, MAX_METHODS);
    }
}
