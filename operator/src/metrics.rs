//! Prometheus metrics of the operator (`GET /metrics`): reconcile counts and errors, the
//! number of pools, and each pool's capacity and usage as its status last reported them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    /// pool key `<namespace>/<name>` → (capacity, used).
    pools: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Metrics {
    pub fn set_pool(&self, key: &str, capacity: u64, used: u64) {
        if let Ok(mut p) = self.pools.lock() {
            p.insert(key.to_owned(), (capacity, used));
        }
    }
    pub fn remove_pool(&self, key: &str) {
        if let Ok(mut p) = self.pools.lock() {
            p.remove(key);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let pools = self.pools.lock().map(|p| p.clone()).unwrap_or_default();
        let _ = writeln!(s, "# HELP kadalu_operator_reconciles_total Reconciles run.");
        let _ = writeln!(s, "# TYPE kadalu_operator_reconciles_total counter");
        let _ = writeln!(
            s,
            "kadalu_operator_reconciles_total {}",
            self.reconciles.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kadalu_operator_reconcile_errors_total Reconciles that failed."
        );
        let _ = writeln!(s, "# TYPE kadalu_operator_reconcile_errors_total counter");
        let _ = writeln!(
            s,
            "kadalu_operator_reconcile_errors_total {}",
            self.reconcile_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kadalu_operator_pools KadaluStorage objects seen."
        );
        let _ = writeln!(s, "# TYPE kadalu_operator_pools gauge");
        let _ = writeln!(s, "kadalu_operator_pools {}", pools.len());
        let _ = writeln!(
            s,
            "# HELP kadalu_pool_capacity_bytes Usable bytes of a pool."
        );
        let _ = writeln!(s, "# TYPE kadalu_pool_capacity_bytes gauge");
        for (k, (c, _)) in &pools {
            let _ = writeln!(
                s,
                "kadalu_pool_capacity_bytes{{pool=\"{}\"}} {c}",
                escape(k)
            );
        }
        let _ = writeln!(s, "# HELP kadalu_pool_used_bytes Used bytes of a pool.");
        let _ = writeln!(s, "# TYPE kadalu_pool_used_bytes gauge");
        for (k, (_, u)) in &pools {
            let _ = writeln!(s, "kadalu_pool_used_bytes{{pool=\"{}\"}} {u}", escape(k));
        }
        s
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `render()` on every request to `listener` (any path answers /metrics).
pub async fn serve(listener: tokio::net::TcpListener, m: std::sync::Arc<Metrics>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            // The request itself does not matter; read (bounded, with a deadline) what the
            // client sent so it is not reset before it reads the answer.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = m.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_pools() {
        let m = Metrics::default();
        m.reconciles.fetch_add(3, Ordering::Relaxed);
        m.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        m.set_pool("ns/p1", 100, 40);
        let t = m.render();
        assert!(t.contains("kadalu_operator_reconciles_total 3\n"));
        assert!(t.contains("kadalu_operator_reconcile_errors_total 1\n"));
        assert!(t.contains("kadalu_operator_pools 1\n"));
        assert!(t.contains("kadalu_pool_capacity_bytes{pool=\"ns/p1\"} 100\n"));
        assert!(t.contains("kadalu_pool_used_bytes{pool=\"ns/p1\"} 40\n"));
        m.remove_pool("ns/p1");
        assert!(m.render().contains("kadalu_operator_pools 0\n"));
    }
}
