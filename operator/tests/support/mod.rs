//! Helpers shared by the operator's integration tests that run real programs (RabbitMQ,
//! HAProxy, mosquitto). Each test file uses only some of them.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;

/// Finds a program on PATH or in the sbin directories (haproxy and mosquitto live in
/// /usr/sbin); panics with `hint` (how to install it) when it is missing.
pub fn binary(name: &str, hint: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed (needed by this test): {hint}"))
}

/// `N` ports free both on 127.0.0.1 and on `other` (another loopback address), so that
/// processes on the two addresses can use the same port numbers.
pub fn free_ports<const N: usize>(other: Ipv4Addr) -> [u16; N] {
    let mut held = Vec::new();
    let mut ports = [0u16; N];
    let mut i = 0;
    while i < N {
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1");
        let port = a.local_addr().expect("an address").port();
        if let Ok(b) = TcpListener::bind((IpAddr::V4(other), port)) {
            ports[i] = port;
            held.push((a, b));
            i += 1;
        }
    }
    ports
}
