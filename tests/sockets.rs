//! statecar's TCP connections, looked at from outside the process: the app's connection to the
//! API and the connections to Redis have Nagle's algorithm off (TCP_NODELAY), so the tail of an
//! answer or of a batch of commands is never held back waiting for an acknowledgement.
//!
//! The test copies the sidecar's socket descriptors into itself with `pidfd_getfd` (Linux 5.6,
//! same user) and asks each for its options and its peer.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde_json::json;
use statecar_tests::{Sidecar, StoreKind, shared_redis};

/// A copy of descriptor `fd` of process `pid`, closed on drop.
struct Borrowed(libc::c_int);

impl Borrowed {
    fn of(pidfd: libc::c_int, fd: libc::c_int) -> Option<Borrowed> {
        // SAFETY: plain syscalls on integers; a failure returns -1.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
        (dup >= 0).then_some(Borrowed(dup as libc::c_int))
    }

    /// The IPv4 peer of a connected TCP socket.
    fn peer(&self) -> Option<SocketAddrV4> {
        // SAFETY: `addr` is large enough for an IPv4 address and `len` says so.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe {
            libc::getpeername(self.0, &mut addr as *mut _ as *mut libc::sockaddr, &mut len)
        };
        (rc == 0 && addr.sin_family as i32 == libc::AF_INET).then(|| {
            SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u16::from_be(addr.sin_port),
            )
        })
    }

    fn nodelay(&self) -> bool {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` is an int and `len` says so.
        let rc = unsafe {
            libc::getsockopt(
                self.0,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut value as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(TCP_NODELAY)");
        value != 0
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(self.0) };
    }
}

/// (peer, TCP_NODELAY) of every connected IPv4 socket of process `pid`.
fn connections(pid: i32) -> Vec<(SocketAddrV4, bool)> {
    // SAFETY: plain syscall; a failure returns -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd directory") {
        let entry = entry.expect("fd entry");
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        if let Some(sock) = Borrowed::of(pidfd, fd)
            && let Some(peer) = sock.peer()
        {
            out.push((peer, sock.nodelay()));
        }
    }
    // SAFETY: the descriptor is ours.
    unsafe { libc::close(pidfd) };
    out
}

#[tokio::test]
async fn api_and_redis_connections_have_nagle_off() {
    let sc = Sidecar::start(StoreKind::Redis).await;
    // A keep-alive connection from the "app" that stays open while the sockets are read.
    let app = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let body = json!([{"key": "k", "value": "v"}]);
    let r = app
        .post(sc.url("/v1.0/state/statestore"))
        .json(&body)
        .send()
        .await
        .expect("save");
    assert_eq!(r.status().as_u16(), 204);
    let r = app
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);

    let conns = connections(sc.pid());
    let redis_port = shared_redis().port();
    let to_redis: Vec<_> = conns
        .iter()
        .filter(|(p, _)| p.port() == redis_port)
        .collect();
    // The app's connection: its peer is the client's side, not a port statecar connects to.
    let from_app: Vec<_> = conns
        .iter()
        .filter(|(p, _)| p.port() != redis_port)
        .collect();
    assert!(!to_redis.is_empty(), "no connection to Redis in {conns:?}");
    assert!(
        !from_app.is_empty(),
        "no connection from the app in {conns:?}"
    );
    for (peer, nodelay) in &conns {
        assert!(
            nodelay,
            "TCP_NODELAY is off on the connection to {peer} ({conns:?})"
        );
    }
}
