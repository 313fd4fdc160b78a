//! The brick's Prometheus endpoint: a real server with `--metrics-listen`,
//! scraped over HTTP after real requests.

use kadalu_e2e::{Brick, QuotaAdmin};
use std::io::{Read, Write};
use std::time::Duration;

fn scrape(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_report_space_pvs_and_request_latency() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let root = tempfile::tempdir().unwrap();
    let brick = Brick::start_with(
        root,
        "127.0.0.1:0",
        vec!["--metrics-listen".into(), addr.clone()],
    );
    let mut q = QuotaAdmin::new(&[brick.addr()]);
    q.create("web", 1 << 30, 100).unwrap();
    let page = scrape(&addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("kadalu_brick_up 1"));
    assert!(page.contains("kadalu_brick_capacity_bytes "));
    assert!(
        page.contains("kadalu_pv_limit_bytes{pv=\"web\"} 1073741824"),
        "{page}"
    );
    assert!(page.contains("kadalu_pv_used_inodes{pv=\"web\"} 0"));
    assert!(
        page.contains(
            "kadalu_request_duration_seconds_count{method=\"/kadalu.quota.v1.Quota/CreatePv\"} 1"
        ),
        "{page}"
    );
    assert!(scrape(&addr, "/other").starts_with("HTTP/1.1 404"));
}
