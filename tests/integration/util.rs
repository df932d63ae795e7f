//! Helpers shared by the integration tests.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The limit on every await in these tests.
pub const T: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`T`].
pub async fn within<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {T:?}"),
    }
}

/// Whether IPv6 loopback works here. Without it, tests skip their IPv6 part
/// with a printed reason, except under CI=true, where that is a failure.
pub fn have_ipv6() -> bool {
    let ok = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "IPv6 loopback (::1) is not available, and CI=true forbids skipping"
        );
        eprintln!("skipping IPv6: ::1 is not available on this machine");
    }
    ok
}

/// 127.0.0.1, and ::1 where it works.
pub fn loopbacks() -> Vec<IpAddr> {
    let mut v = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if have_ipv6() {
        v.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    v
}
