//! An MQTT-level probe: a real MQTT 3.1.1 `CONNECT` that must be answered by an accepting
//! `CONNACK`, then a `DISCONNECT`.
//!
//! A listening port is not a working broker: RabbitMQ 3.10 accepts TCP on 1883 and then refuses
//! every `CONNECT` with return code 3 ("server unavailable") while its MQTT client-id tracker
//! (a Ra cluster) has not joined. Only a `CONNECT` tells the two apart. The probe uses a fresh
//! client id (`mooring-health-<random>`) and a clean session, so it leaves no session or queue
//! behind and never takes over a real client's id.
//!
//! When the brokers sit behind Mooring's load balancer with `loadBalancer.proxyProtocol`, their
//! listeners require a PROXY protocol header before the first MQTT byte; the probe then sends a v2
//! `PROXY` header with its own connection's addresses ([`ProxyHeader::V2`]; not `LOCAL`, see
//! [`crate::load_balancer::proxy_header`]). rumqttc cannot write anything before its `CONNECT` nor
//! take a connected stream, so the probe uses only rumqttc's packet types and does the exchange on
//! its own TCP stream.

use std::time::Duration;

use bytes::BytesMut;
use rand::distr::{Alphanumeric, SampleString};
use rumqttc::mqttbytes::v4::{Connect, Disconnect, Packet};
use rumqttc::mqttbytes::Error as PacketError;
use rumqttc::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load_balancer::proxy_header;

/// The prefix of the probe's client ids.
pub const CLIENT_ID_PREFIX: &str = "mooring-health-";

/// How long the probe waits for its `DISCONNECT` to be written after the `CONNACK`.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);

/// The keepalive the `CONNECT` announces, in seconds.
const KEEP_ALIVE_SECONDS: u16 = 30;

/// The largest packet the probe reads: a `CONNACK` is 4 bytes.
const MAX_PACKET: usize = 1024;

/// What the probe writes before its `CONNECT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Nothing: the listener takes MQTT directly.
    #[default]
    None,
    /// A PROXY protocol v2 `PROXY` header with the probe's own source and destination.
    V2,
}

/// A fresh probe client id: [`CLIENT_ID_PREFIX`] and 12 random lowercase letters or digits.
pub fn probe_client_id() -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 12)
        .to_ascii_lowercase();
    format!("{CLIENT_ID_PREFIX}{suffix}")
}

/// What a refused `CONNECT`'s return code means.
pub fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "accepted",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version (1)",
        ConnectReturnCode::BadClientId => "identifier rejected (2)",
        ConnectReturnCode::ServiceUnavailable => "server unavailable (3)",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password (4)",
        ConnectReturnCode::NotAuthorized => "not authorized (5)",
    }
}

/// Connects to `host:port` with MQTT 3.1.1 as `username` (clean session, a fresh
/// [`probe_client_id`]), requires an accepting `CONNACK` within `timeout`, then disconnects.
/// `Err` says what happened instead (no answer, a refusal with its return code, not MQTT).
/// The password never appears in the error.
pub async fn connect_check(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
    timeout: Duration,
) -> Result<(), String> {
    connect_check_with(host, port, username, password, timeout, ProxyHeader::None).await
}

/// [`connect_check`], with `proxy` written before the `CONNECT`.
pub async fn connect_check_with(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
    timeout: Duration,
    proxy: ProxyHeader,
) -> Result<(), String> {
    let exchange = async {
        let mut stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut out = BytesMut::new();
        if proxy == ProxyHeader::V2 {
            let (source, destination) = stream
                .local_addr()
                .and_then(|l| stream.peer_addr().map(|p| (l, p)))
                .map_err(|e| format!("cannot read the connection's addresses: {e}"))?;
            let header = proxy_header::proxy_v2(source, destination)
                .map_err(|e| format!("cannot encode the PROXY header: {e}"))?;
            out.extend_from_slice(&header);
        }
        let mut connect = Connect::new(probe_client_id());
        connect.clean_session = true;
        connect.keep_alive = KEEP_ALIVE_SECONDS;
        connect.set_login(username, password);
        // In a buffer of its own: `Connect::write` patches its flags at an index counted from
        // the start of the buffer.
        let mut packet = BytesMut::new();
        connect
            .write(&mut packet)
            .map_err(|e| format!("cannot encode the CONNECT: {e}"))?;
        out.extend_from_slice(&packet);
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("cannot send the CONNECT: {e}"))?;
        let ack = read_packet(&mut stream).await?;
        Ok::<_, String>((stream, ack))
    };
    let (mut stream, ack) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(format!("no CONNACK from {host}:{port} within {timeout:?}")),
        Ok(result) => result?,
    };
    match ack {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {}
        Packet::ConnAck(ack) => return Err(format!("CONNECT refused: {}", refusal(ack.code))),
        other => return Err(format!("expected CONNACK, got {other:?}")),
    }
    // Best effort: the check has passed; the broker drops the clean session anyway.
    let mut out = BytesMut::new();
    if Disconnect.write(&mut out).is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
    Ok(())
}

/// Reads one MQTT packet from `stream`.
async fn read_packet(stream: &mut TcpStream) -> Result<Packet, String> {
    let mut buffer = BytesMut::with_capacity(64);
    loop {
        match Packet::read(&mut buffer, MAX_PACKET) {
            Ok(packet) => return Ok(packet),
            Err(PacketError::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("not an MQTT answer: {e}")),
        }
        let read = stream
            .read_buf(&mut buffer)
            .await
            .map_err(|e| format!("connection failed before CONNACK: {e}"))?;
        if read == 0 {
            return Err("the broker closed the connection without CONNACK".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn probe_client_ids_are_fresh_and_prefixed() {
        let a = probe_client_id();
        let b = probe_client_id();
        assert!(a.starts_with(CLIENT_ID_PREFIX));
        assert_eq!(a.len(), CLIENT_ID_PREFIX.len() + 12);
        assert_ne!(a, b);
        // Client ids up to 23 bytes must be accepted by every MQTT 3.1.1 server.
        assert!(a.len() <= 27);
    }

    /// A fake server that answers the first packet with `reply` and then waits.
    async fn fake_server(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = socket.read(&mut buf).await;
            if !reply.is_empty() {
                socket.write_all(reply).await.unwrap();
            }
            let _ = socket.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        port
    }

    #[tokio::test]
    async fn an_accepting_connack_passes() {
        let port = fake_server(&[0x20, 0x02, 0x00, 0x00]).await;
        let r = connect_check("127.0.0.1", port, "u", "p", Duration::from_secs(2)).await;
        assert_eq!(r, Ok(()));
    }

    #[tokio::test]
    async fn server_unavailable_fails_with_the_return_code() {
        let port = fake_server(&[0x20, 0x02, 0x00, 0x03]).await;
        let e = connect_check("127.0.0.1", port, "u", "secret-pw", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("server unavailable (3)"), "{e}");
        assert!(!e.contains("secret-pw"));
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let port = fake_server(b"").await;
        let e = connect_check("127.0.0.1", port, "u", "p", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("no CONNACK"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_fails() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = connect_check("127.0.0.1", port, "u", "p", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(!e.is_empty());
    }
    /// A fake server that records what the first connection sends until `CONNECT` is complete,
    /// answers an accepting `CONNACK`, and returns the bytes and the client's address.
    async fn recording_server() -> (u16, tokio::sync::oneshot::Receiver<(Vec<u8>, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, peer) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            // The CONNECT's client id ends the packet: read until it has arrived.
            while !String::from_utf8_lossy(&got).contains(CLIENT_ID_PREFIX) {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(n) =
                tokio::time::timeout(Duration::from_millis(1), socket.read(&mut buf)).await
            {
                got.extend_from_slice(&buf[..n.unwrap()]);
            }
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            let _ = tx.send((got, peer.to_string()));
            let _ = socket.read(&mut buf).await;
        });
        (port, rx)
    }

    #[tokio::test]
    async fn with_proxy_v2_the_connect_follows_a_proxy_header_with_the_real_addresses() {
        let (port, rx) = recording_server().await;
        let r = connect_check_with(
            "127.0.0.1",
            port,
            "u",
            "p",
            Duration::from_secs(2),
            ProxyHeader::V2,
        )
        .await;
        assert_eq!(r, Ok(()));
        let (bytes, client) = rx.await.unwrap();
        let header = ppp::v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(header.command, ppp::v2::Command::Proxy, "PROXY, not LOCAL");
        let client: std::net::SocketAddr = client.parse().unwrap();
        let server: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(header.addresses, ppp::v2::Addresses::from((client, server)));
        let mut rest = BytesMut::from(&bytes[header.len()..]);
        match Packet::read(&mut rest, 1024).unwrap() {
            Packet::Connect(c) => {
                assert!(c.client_id.starts_with(CLIENT_ID_PREFIX));
                assert!(c.clean_session);
                assert_eq!(c.login.unwrap().username, "u");
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn without_a_header_the_first_byte_is_the_connect() {
        let (port, rx) = recording_server().await;
        let r = connect_check("127.0.0.1", port, "u", "p", Duration::from_secs(2)).await;
        assert_eq!(r, Ok(()));
        let (bytes, _) = rx.await.unwrap();
        assert_eq!(bytes[0], 0x10, "CONNECT");
        let mut all = BytesMut::from(bytes.as_slice());
        assert!(matches!(
            Packet::read(&mut all, 1024),
            Ok(Packet::Connect(_))
        ));
    }

    #[tokio::test]
    async fn a_broker_that_closes_without_connack_fails() {
        // What a listener that requires the PROXY header does with a bare CONNECT (measured with
        // RabbitMQ 3.10.8), and one that does not with a header.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = socket.read(&mut buf).await;
        });
        let e = connect_check("127.0.0.1", port, "u", "p", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("closed the connection without CONNACK"), "{e}");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_connack_fails() {
        let port = fake_server(&[0xd0, 0x00]).await;
        let e = connect_check("127.0.0.1", port, "u", "p", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("expected CONNACK, got PingResp"), "{e}");
    }
}
