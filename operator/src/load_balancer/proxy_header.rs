//! PROXY protocol v2 headers (encoded by the `ppp` crate), as HAProxy sends them to the brokers
//! with `send-proxy-v2` and as Mooring's own MQTT checks must send them to listeners that require
//! one.
//!
//! Mooring's checks send a `PROXY` command, never a `LOCAL` one (which the protocol meant for
//! health checks): RabbitMQ 3.10, which Mooring supports, crashes the connection on a `LOCAL`
//! header (`badmatch` in `rabbit_net:socket_ends`, measured with 3.10.8; rabbitmq-server issue
//! 8654, fixed in 2023 releases),
//! and so does HAProxy's own `check-send-proxy`, which sends `LOCAL`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use ppp::v2::{Builder, Command, Protocol, Version};

/// A v2 `PROXY` header for a TCP connection from `source` to `destination`. Both must be of the
/// same family (IPv4 or IPv6); mixed families are refused (the header would carry no address,
/// which RabbitMQ 3.10 cannot handle either).
pub fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> io::Result<Vec<u8>> {
    if source.is_ipv4() != destination.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("PROXY header: {source} and {destination} are of different address families"),
        ));
    }
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
}

/// The header of HAProxy's health checks when the brokers require the PROXY protocol: a
/// `PROXY` command from `0.0.0.0:0` to `0.0.0.0:0` (a fixed text in `haproxy.cfg` cannot know
/// the check's addresses; the brokers log these connections as coming from `0.0.0.0:0`).
pub fn health_check() -> io::Result<Vec<u8>> {
    let unspecified = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    proxy_v2(unspecified, unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Addresses, Header};

    const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    #[test]
    fn the_health_check_header_is_a_v2_proxy_command_over_tcp4() {
        let bytes = health_check().unwrap();
        assert_eq!(bytes.len(), 28, "16 bytes of header, 12 of IPv4 addresses");
        assert_eq!(&bytes[..12], SIGNATURE);
        assert_eq!(bytes[12], 0x21, "version 2, PROXY (not LOCAL)");
        assert_eq!(bytes[13], 0x11, "TCP over IPv4");
        assert_eq!(&bytes[14..16], &[0, 12]);
        assert!(bytes[16..].iter().all(|b| *b == 0));
    }

    #[test]
    fn proxy_headers_carry_both_addresses() {
        let src: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let dst: SocketAddr = "10.4.5.6:1883".parse().unwrap();
        let bytes = proxy_v2(src, dst).unwrap();
        let header = Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(header.addresses, Addresses::from((src, dst)));

        let src6: SocketAddr = "[fd00::3]:40000".parse().unwrap();
        let dst6: SocketAddr = "[fd00::4]:1883".parse().unwrap();
        let bytes = proxy_v2(src6, dst6).unwrap();
        assert_eq!(bytes[13], 0x21, "TCP over IPv6");
        assert_eq!(bytes.len(), 16 + 36);
    }

    #[test]
    fn mixed_families_are_refused() {
        let src: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let dst: SocketAddr = "[fd00::4]:1883".parse().unwrap();
        assert!(proxy_v2(src, dst).is_err());
    }
}
