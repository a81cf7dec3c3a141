//! An MQTT-level probe: a real MQTT 3.1.1 `CONNECT` that must be answered by an accepting
//! `CONNACK`, then a `DISCONNECT`.
//!
//! A listening port is not a working broker: RabbitMQ 3.10 accepts TCP on 1883 and then refuses
//! every `CONNECT` with return code 3 ("server unavailable") while its MQTT client-id tracker
//! (a Ra cluster) has not joined. Only a `CONNECT` tells the two apart. The probe uses a fresh
//! client id (`mooring-health-<random>`) and a clean session, so it leaves no session or queue
//! behind and never takes over a real client's id.

use std::net::Ipv6Addr;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};

/// The prefix of the probe's client ids.
pub const CLIENT_ID_PREFIX: &str = "mooring-health-";

/// How long the probe waits for its `DISCONNECT` to be written after the `CONNACK`.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);

/// A fresh probe client id: [`CLIENT_ID_PREFIX`] and 12 random lowercase letters or digits.
pub fn probe_client_id() -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 12)
        .to_ascii_lowercase();
    format!("{CLIENT_ID_PREFIX}{suffix}")
}

/// `host` as a socket address host: IPv6 literals in brackets.
fn socket_host(host: &str) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    }
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

/// Why the connection failed, in words.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("CONNECT refused: {}", refusal(*code)),
        ConnectionError::NotConnAck(packet) => format!("expected CONNACK, got {packet:?}"),
        other => other.to_string(),
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
    let mut options = MqttOptions::new(probe_client_id(), socket_host(host), port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_credentials(username, password);
    let (client, mut events) = AsyncClient::new(options, 4);
    // rumqttc's own connect limit is in whole seconds; the outer timeout is the real one.
    let mut network = events.network_options();
    network.set_connection_timeout(timeout.as_secs().saturating_add(1));
    events.set_network_options(network);

    let connected = tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return match ack.code {
                        ConnectReturnCode::Success => Ok(()),
                        code => Err(format!("CONNECT refused: {}", refusal(code))),
                    };
                }
                Ok(_) => continue,
                Err(e) => return Err(describe(&e)),
            }
        }
    })
    .await;
    match connected {
        Err(_) => Err(format!("no CONNACK from {host}:{port} within {timeout:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => {
            // Best effort: the check has passed; the broker drops the clean session anyway.
            if client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
                    while let Ok(event) = events.poll().await {
                        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
            }
            Ok(())
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

    #[test]
    fn ipv6_literals_get_brackets() {
        assert_eq!(socket_host("10.244.0.3"), "10.244.0.3");
        assert_eq!(socket_host("fd00::3"), "[fd00::3]");
        assert_eq!(socket_host("bus-0.bus-headless"), "bus-0.bus-headless");
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
}
