//! The wire transport (`kadalu_proto::wire`) end to end: a mount that speaks it to a
//! Replica1 brick and to a Replica3 set (where "not the leader" answers and errnos must
//! travel as they do over gRPC), a brick killed and restarted under it, and hostile bytes
//! sent to the shared port, after which both transports still serve.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kadalu_e2e::process::poll_until;
use kadalu_e2e::{Brick, Mount, MountOptions, ReplicaSet};

fn wire(mut o: MountOptions) -> MountOptions {
    o.protocol = Some("wire");
    o
}

fn exercise(root: &std::path::Path) {
    let d = root.join("dir");
    std::fs::create_dir(&d).unwrap();
    for i in 0..200 {
        std::fs::write(d.join(format!("f{i}")), format!("content {i}")).unwrap();
    }
    let mut names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 200);
    assert_eq!(std::fs::read_to_string(d.join("f7")).unwrap(), "content 7");
    // A 3 MiB file crosses several 1 MiB requests each way.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.join("big"), &big).unwrap();
    assert!(std::fs::read(d.join("big")).unwrap() == big);
    std::fs::rename(d.join("f1"), d.join("renamed")).unwrap();
    // An errno from the brick arrives as the same errno.
    let e = std::fs::read(d.join("f1")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = std::fs::remove_dir(&d).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
}

#[test]
fn replica1_over_wire_survives_a_brick_restart() {
    let mut brick = Brick::start();
    let opts = wire(MountOptions {
        rpc_timeout: Some(1.0),
        unavailable_wait: Some(15.0),
        entry_ttl: Some(0.1),
        attr_ttl: Some(0.1),
        ..MountOptions::default()
    });
    let m = Mount::start(&[brick.addr()], &opts);
    exercise(m.path());
    brick.restart();
    // The broken connection is noticed, a new one made, and the request answered.
    let back = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        std::fs::write(m.path().join("after-restart"), b"ok").ok()
    });
    assert!(
        back.is_some(),
        "the mount did not recover after the restart"
    );
    assert_eq!(
        std::fs::read(m.path().join("after-restart")).unwrap(),
        b"ok"
    );
}

#[test]
fn grpc_and_wire_mounts_agree() {
    let brick = Brick::start();
    let g = Mount::start(
        &[brick.addr()],
        &MountOptions {
            protocol: Some("grpc"),
            ..MountOptions::short_ttl(0.1)
        },
    );
    exercise(g.path());
    let w = Mount::start(&[brick.addr()], &wire(MountOptions::short_ttl(0.1)));
    assert_eq!(
        std::fs::read_to_string(w.path().join("dir/f9")).unwrap(),
        "content 9"
    );
    assert_eq!(
        std::fs::read_dir(w.path().join("dir")).unwrap().count(),
        201
    );
}

#[test]
fn replica3_over_wire_follows_the_leader() {
    let mut set = ReplicaSet::start();
    let m = Mount::start(&set.addrs(), &wire(MountOptions::replica3()));
    exercise(m.path());
    let leader = set.leader().expect("a leader");
    set.bricks[leader].kill();
    let after = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        std::fs::write(m.path().join("after-failover"), b"still here").ok()
    });
    assert!(after.is_some(), "no write succeeded after the leader died");
    assert_eq!(
        std::fs::read(m.path().join("after-failover")).unwrap(),
        b"still here"
    );
}

#[test]
fn hostile_bytes_on_the_shared_port_change_nothing() {
    let brick = Brick::start();
    let addr = brick.addr();
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        // The brick closes the connection without a reply: end of stream (or a reset),
        // not bytes and not a connection left hanging until the read timeout.
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the brick answered garbage: {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the brick left a garbage connection open: {e}"),
        }
    };
    // Bad magic.
    send(b"KADWIRE9 and then some");
    // Good magic, then a length far over the limit.
    let mut huge = b"KADWIRE1".to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    send(&huge);
    // Good magic, then a frame whose inner lengths lie.
    let mut lies = b"KADWIRE1".to_vec();
    lies.extend_from_slice(&14u32.to_le_bytes());
    lies.extend_from_slice(&1u64.to_le_bytes());
    lies.extend_from_slice(&60000u16.to_le_bytes());
    lies.extend_from_slice(b"/x/y");
    send(&lies);
    // Both transports still serve.
    let m = Mount::start(
        &[addr],
        &MountOptions {
            protocol: Some("grpc"),
            ..MountOptions::default()
        },
    );
    std::fs::write(m.path().join("grpc"), b"1").unwrap();
    let w = Mount::start(&[addr], &wire(MountOptions::default()));
    assert_eq!(std::fs::read(w.path().join("grpc")).unwrap(), b"1");
}
