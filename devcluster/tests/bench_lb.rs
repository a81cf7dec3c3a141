//! Benchmark (run by `scripts/bench`, ignored by the test run): what Mooring's sticky HAProxy load
//! balancer costs an MQTT client, measured side by side with a direct connection to the broker.
//!
//! A 1-node RabbitMQ 3.10 cluster with `spec.loadBalancer` on (1 HAProxy replica) on a devcluster,
//! the operator in-process. One node, so that "direct" and "through the LB" reach the very same
//! broker without having to find out where the LB placed a client id, and so that two idle broker
//! VMs do not share the machine's cores with the measurement (the LB's work per connection, a
//! CONNECT inspection and one stick-table lookup, does not depend on the number of servers).
//!
//! The test process is the client; it reaches the broker Pod and the HAProxy Pod at their Pod IPs
//! on port 1883 with a minimal MQTT 3.1.1 client written here (blocking std sockets on their own
//! threads, `TCP_NODELAY`), so that the client's own overhead is small and the same on both paths.
//!
//! - **Connect latency**: from `connect()` of the TCP socket to the CONNACK (clean session, one
//!   fixed client id), then DISCONNECT and wait until the server closes. Samples alternate between
//!   the paths (pair `i` starts with the LB when `i` is odd, direct when it is even), so that
//!   background load hits both alike; a warm-up of 50 pairs is not counted. p50, p99 and the
//!   added median.
//! - **Publish throughput**: one publisher, `MOORING_BENCH_LB_MESSAGES` (default 200 000) messages
//!   of 64 bytes on one topic that nobody subscribes to (the broker routes and drops them: its
//!   cheapest path, so the LB's share is the largest it can be). QoS 1: from the CONNACK to the
//!   last PUBACK, at most [`WINDOW`] messages unacknowledged. QoS 0: from the CONNACK until every
//!   message has been written to the socket and a final QoS 1 message has been acknowledged (the
//!   broker handles one connection's packets in order, so that PUBACK means it has taken all of
//!   them in). A short warm-up of every path and QoS runs first; then the messages of each QoS
//!   are split into [`ROUNDS`] runs per path, the paths alternating (LB first in even rounds), so
//!   that a change of background load hits both alike; the figure is all messages over the summed
//!   run times. The CPU time the broker, HAProxy and the test process used is printed too.
//!
//! Needs root, the control-plane binaries, Debian's `rabbitmq-server` and `haproxy`, and the
//! `mooring` binary next to `devcluster` (`cargo build -p mooring-operator`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::brokers::*;
use support::wait_for_every;

const CLUSTER: &str = "lbbench";
const MQTT_PORT: u16 = 1883;
/// Messages in flight at most for QoS 1 (rumqttc's default).
const WINDOW: usize = 100;
const PAYLOAD: usize = 64;
const TOPIC: &str = "bench/lb";
const CONNECT_SAMPLES: usize = 500;
const CONNECT_WARMUP: usize = 50;
/// Publish runs per path and QoS; the messages are split between them.
const ROUNDS: usize = 5;
/// Time allowed for any single network step of the benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// MQTT 3.1.1 packets, encoded and decoded by rumqttc's `mqttbytes` (the sockets are plain
/// blocking ones: an async client costs the 2 shared cores more than the path being measured).
mod mqtt {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{Connect, Disconnect, Packet, Publish};
    use rumqttc::mqttbytes::{Error, QoS};

    /// The largest packet read back (PUBACK, CONNACK).
    const MAX_PACKET: usize = 1024;

    /// CONNECT, clean session, keepalive 60 s, no credentials.
    pub fn connect(client_id: &str) -> Vec<u8> {
        let mut c = Connect::new(client_id);
        c.keep_alive = 60;
        c.clean_session = true;
        let mut b = BytesMut::new();
        c.write(&mut b).expect("encode CONNECT");
        b.to_vec()
    }

    /// DISCONNECT.
    pub fn disconnect() -> Vec<u8> {
        let mut b = BytesMut::new();
        Disconnect.write(&mut b).expect("encode DISCONNECT");
        b.to_vec()
    }

    /// PUBLISH at QoS 0 (`packet_id` None) or QoS 1, appended to `out`.
    pub fn publish(out: &mut Vec<u8>, topic: &str, packet_id: Option<u16>, payload: &[u8]) {
        let qos = if packet_id.is_some() {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = packet_id.unwrap_or(0);
        let mut b = BytesMut::new();
        p.write(&mut b).expect("encode PUBLISH");
        out.extend_from_slice(&b);
    }

    /// Whether `bytes` hold exactly one CONNACK that accepted the connection.
    pub fn accepted(bytes: &[u8]) -> bool {
        let mut b = BytesMut::from(bytes);
        matches!(
            Packet::read(&mut b, MAX_PACKET),
            Ok(Packet::ConnAck(a)) if a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success
        ) && b.is_empty()
    }

    /// Removes the complete packets at the start of `buf` and returns them.
    pub fn take_packets(buf: &mut BytesMut) -> Vec<Packet> {
        let mut out = Vec::new();
        loop {
            match Packet::read(buf, MAX_PACKET) {
                Ok(p) => out.push(p),
                Err(Error::InsufficientBytes(_)) => return out,
                Err(e) => panic!("a malformed packet from the server: {e:?}"),
            }
        }
    }
}

fn io<T>(what: &str, r: std::io::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Connects to `host:1883` as `client_id` and returns the socket once the CONNACK accepted it.
fn connect(host: &str, client_id: &str) -> TcpStream {
    let ip: IpAddr = host.parse().expect("a Pod IP");
    let mut s = io(
        "connect",
        TcpStream::connect_timeout(&SocketAddr::new(ip, MQTT_PORT), IO_TIMEOUT),
    );
    io("TCP_NODELAY", s.set_nodelay(true));
    io("read timeout", s.set_read_timeout(Some(IO_TIMEOUT)));
    io("write timeout", s.set_write_timeout(Some(IO_TIMEOUT)));
    io("send CONNECT", s.write_all(&mqtt::connect(client_id)));
    let mut ack = [0u8; 4];
    io("read CONNACK", s.read_exact(&mut ack));
    assert!(mqtt::accepted(&ack), "CONNACK from {host}: {ack:x?}");
    s
}

/// Sends DISCONNECT and waits until the server has closed the connection.
fn disconnect(mut s: TcpStream) {
    io("send DISCONNECT", s.write_all(&mqtt::disconnect()));
    let mut rest = Vec::new();
    io("wait for the close", s.read_to_end(&mut rest));
}

/// One connect latency sample: TCP connect to CONNACK, then a clean DISCONNECT (not timed).
fn connect_latency(host: &str, client_id: &str) -> Duration {
    let start = Instant::now();
    let s = connect(host, client_id);
    let took = start.elapsed();
    disconnect(s);
    took
}

/// PUBACKs received so far, and a signal for the publisher waiting for a free slot.
#[derive(Default)]
struct Acks {
    count: Mutex<usize>,
    arrived: Condvar,
}

/// Socket reads that returned PUBACKs, over all runs (how finely the path splits them).
static ACK_READS: AtomicUsize = AtomicUsize::new(0);

/// Reads until `n` PUBACKs have arrived, counting them in `acks`; returns when the last one did.
fn read_pubacks(r: &mut TcpStream, n: usize, acks: &Acks) -> Instant {
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut acked = 0;
    while acked < n {
        let got = io("read PUBACKs", r.read(&mut chunk));
        assert!(got > 0, "the server closed after {acked} of {n} PUBACKs");
        ACK_READS.fetch_add(1, Ordering::Relaxed);
        buf.extend_from_slice(&chunk[..got]);
        let packets = mqtt::take_packets(&mut buf);
        assert!(
            packets
                .iter()
                .all(|p| matches!(p, rumqttc::mqttbytes::v4::Packet::PubAck(_))),
            "only PUBACKs expected, got {packets:?}"
        );
        acked += packets.len();
        *acks.count.lock().expect("the ack count") = acked;
        acks.arrived.notify_one();
    }
    Instant::now()
}

#[derive(Clone, Copy, PartialEq)]
enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

/// Publishes `n` messages of [`PAYLOAD`] bytes as client `client_id` to `host`; returns the time
/// from the CONNACK to the broker having taken all of them in (see the module documentation).
/// Blocking.
fn publish_run(host: &str, client_id: &str, qos: Qos, n: usize, window: usize) -> Duration {
    let mut s = connect(host, client_id);
    let payload = vec![b'x'; PAYLOAD];
    let start = Instant::now();
    let end = match qos {
        Qos::AtMostOnce => {
            let mut one = Vec::new();
            mqtt::publish(&mut one, TOPIC, None, &payload);
            const BATCH: usize = 256;
            let batch = one.repeat(BATCH);
            let mut left = n;
            while left > 0 {
                let k = left.min(BATCH);
                io("publish", s.write_all(&batch[..k * one.len()]));
                left -= k;
            }
            let mut barrier = Vec::new();
            mqtt::publish(&mut barrier, TOPIC, Some(1), &payload);
            io("publish the barrier", s.write_all(&barrier));
            read_pubacks(&mut s, 1, &Acks::default())
        }
        Qos::AtLeastOnce => {
            let acks = Acks::default();
            let mut r = io("clone the socket", s.try_clone());
            std::thread::scope(|scope| {
                let reader = scope.spawn(|| read_pubacks(&mut r, n, &acks));
                let mut id: u16 = 0;
                let mut sent = 0;
                let mut batch = Vec::with_capacity(window * (PAYLOAD + 16));
                while sent < n {
                    // Wait for a free slot, then take every slot that is free.
                    let free = {
                        let mut acked = acks.count.lock().expect("the ack count");
                        while sent - *acked >= window {
                            let (next, waited) = acks
                                .arrived
                                .wait_timeout(acked, IO_TIMEOUT)
                                .expect("the ack count");
                            assert!(!waited.timed_out(), "no PUBACK within {IO_TIMEOUT:?}");
                            acked = next;
                        }
                        window - (sent - *acked)
                    };
                    let k = free.min(n - sent);
                    batch.clear();
                    for _ in 0..k {
                        id = id.checked_add(1).unwrap_or(1);
                        mqtt::publish(&mut batch, TOPIC, Some(id), &payload);
                    }
                    io("publish", s.write_all(&batch));
                    sent += k;
                }
                reader.join().expect("the PUBACK reader")
            })
        }
    };
    disconnect(s);
    end.duration_since(start)
}

/// CPU time (user + system) of the processes named `comm` in network namespace `netns`.
fn cpu_seconds(netns: &str, comm: &str) -> f64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .expect("run ip netns pids");
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which is in parentheses): state is field 3, utime 14,
        // stime 15.
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
        }
    }
    ticks as f64 / ticks_per_second
}

/// CPU time (user + system) of this process (the client).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    [11, 12]
        .iter()
        .map(|i| {
            fields
                .get(*i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum::<u64>() as f64
        / ticks_per_second
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Clone)]
struct Paths {
    lb: String,
    direct: String,
    lb_netns: String,
    broker_netns: String,
}

/// Publish runs on one path: messages, time and the CPU time the broker, HAProxy and the test
/// process (the client, and the idle in-process operator) used during them.
#[derive(Default)]
struct Runs {
    messages: usize,
    seconds: f64,
    broker_cpu: f64,
    lb_cpu: f64,
    client_cpu: f64,
    /// msg/s of each round.
    rates: Vec<f64>,
    /// Socket reads the PUBACKs came in.
    ack_reads: usize,
}

impl Runs {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }

    /// CPU seconds per 100 000 messages.
    fn per_100k(&self, cpu: f64) -> f64 {
        cpu * 100_000.0 / self.messages as f64
    }
}

/// Adds one publish run of `n` messages on the path `via_lb` to `runs`.
async fn measured_publish(paths: &Paths, via_lb: bool, qos: Qos, n: usize, runs: &mut Runs) {
    let host = if via_lb { &paths.lb } else { &paths.direct }.clone();
    let client_id = if via_lb {
        "mooring-bench-pub-lb"
    } else {
        "mooring-bench-pub-direct"
    };
    let (b0, l0, c0) = (
        cpu_seconds(&paths.broker_netns, "beam.smp"),
        cpu_seconds(&paths.lb_netns, "haproxy"),
        own_cpu_seconds(),
    );
    let reads = ACK_READS.load(Ordering::Relaxed);
    let took = blocking(move || publish_run(&host, client_id, qos, n, WINDOW))
        .await
        .as_secs_f64();
    runs.broker_cpu += cpu_seconds(&paths.broker_netns, "beam.smp") - b0;
    runs.lb_cpu += cpu_seconds(&paths.lb_netns, "haproxy") - l0;
    runs.client_cpu += own_cpu_seconds() - c0;
    runs.ack_reads += ACK_READS.load(Ordering::Relaxed) - reads;
    runs.messages += n;
    runs.seconds += took;
    runs.rates.push(n as f64 / took);
}

/// Publishes `messages` on each path at `qos`, in `rounds` alternating runs (LB first in even
/// rounds, direct first in odd ones); returns (LB, direct).
async fn throughput(paths: &Paths, qos: Qos, messages: usize, rounds: usize) -> (Runs, Runs) {
    let (mut lb, mut direct) = (Runs::default(), Runs::default());
    let per_round = messages / rounds;
    for round in 0..rounds {
        for via_lb in [round % 2 == 0, round % 2 == 1] {
            let runs = if via_lb { &mut lb } else { &mut direct };
            measured_publish(paths, via_lb, qos, per_round, runs).await;
        }
    }
    let q = u8::from(qos == Qos::AtLeastOnce);
    for (what, runs) in [("LB", &lb), ("direct", &direct)] {
        let rates: Vec<String> = runs.rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "publish QoS {q} {what:>6}: {} msgs in {:.2} s = {:.0} msg/s (rounds: {} msg/s); \
             PUBACKs came in {} reads",
            runs.messages,
            runs.seconds,
            runs.rate(),
            rates.join(", "),
            runs.ack_reads
        );
    }
    (lb, direct)
}

/// Runs the blocking client off the async workers (the operator shares them).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the benchmark client")
}

/// The 1-minute load average (other work on the machine shows here).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "no"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/bench"]
async fn bench_load_balancer_against_direct() {
    let messages: usize = std::env::var("MOORING_BENCH_LB_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (env, stop, operator) = Env::start("benchlb").await;
    env.create_spec(
        CLUSTER,
        serde_json::json!({
            "replicas": 1,
            "loadBalancer": {"enabled": true, "replicas": 1},
        }),
    )
    .await;
    let lb_pod = format!("{CLUSTER}-lb-0");
    let broker_pod = format!("{CLUSTER}-0");
    wait_for_every(
        Duration::from_secs(1),
        "the HAProxy Pod ready",
        Duration::from_secs(120),
        || async {
            let ready = env
                .pod(&lb_pod)
                .await
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready.then_some(())
        },
    )
    .await;
    let paths = Paths {
        lb: env.pod_ip(&lb_pod).await,
        direct: env.pod_ip(&broker_pod).await,
        lb_netns: env.dc.netns(&env.pod(&lb_pod).await),
        broker_netns: env.dc.netns(&env.pod(&broker_pod).await),
    };
    wait_for_every(
        Duration::from_secs(1),
        "HAProxy sees the broker up",
        Duration::from_secs(90),
        || async { (servers_up(&paths.lb).await == 1).then_some(()) },
    )
    .await;
    env.dc.elapsed("HAProxy ready, the broker up behind it");

    // Connect latency, the two paths alternating.
    let load_before = load();
    let (mut lb, mut direct) = {
        let paths = paths.clone();
        blocking(move || {
            let id = "mooring-bench-connect";
            let (mut lb, mut direct) = (Vec::new(), Vec::new());
            for i in 0..CONNECT_WARMUP + CONNECT_SAMPLES {
                let (first, second) = if i % 2 == 1 {
                    (&paths.lb, &paths.direct)
                } else {
                    (&paths.direct, &paths.lb)
                };
                let a = connect_latency(first, id);
                let b = connect_latency(second, id);
                if i >= CONNECT_WARMUP {
                    let (l, d) = if i % 2 == 1 { (a, b) } else { (b, a) };
                    lb.push(ms(l));
                    direct.push(ms(d));
                }
            }
            (lb, direct)
        })
        .await
    };
    lb.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    let (lb50, lb99) = (percentile(&lb, 50.0), percentile(&lb, 99.0));
    let (d50, d99) = (percentile(&direct, 50.0), percentile(&direct, 99.0));
    env.dc.elapsed("connect latency measured");

    // Publish throughput: warm up every path and QoS, then the paths alternating.
    let warmup = (messages / 20).max(1000);
    for qos in [Qos::AtMostOnce, Qos::AtLeastOnce] {
        for via_lb in [false, true] {
            let host = if via_lb { &paths.lb } else { &paths.direct }.clone();
            blocking(move || publish_run(&host, "mooring-bench-warmup", qos, warmup, WINDOW)).await;
        }
    }
    let (q0_lb, q0_direct) = throughput(&paths, Qos::AtMostOnce, messages, ROUNDS).await;
    let (q1_lb, q1_direct) = throughput(&paths, Qos::AtLeastOnce, messages, ROUNDS).await;
    env.dc.elapsed("publish throughput measured");
    let load_after = load();

    let added = lb50 - d50;
    let (r0, r1) = (
        q0_lb.rate() / q0_direct.rate(),
        q1_lb.rate() / q1_direct.rate(),
    );
    println!();
    println!(
        "MQTT through Mooring's HAProxy LB vs direct: 1-node RabbitMQ 3.10 on devcluster, 1 HAProxy \
         2.6 replica, client on the host; {CONNECT_SAMPLES} connects per path, {messages} x \
         {PAYLOAD} B per path and QoS in {ROUNDS} alternating runs (QoS 1 window {WINDOW}); load \
         average {load_before} before, {load_after} after"
    );
    println!("| figure | LB | direct | LB vs direct | aim | met |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| connect latency p50 | {lb50:.2} ms | {d50:.2} ms | {added:+.2} ms | <= +1 ms | {} |",
        yes_no(added <= 1.0)
    );
    println!(
        "| connect latency p99 | {lb99:.2} ms | {d99:.2} ms | {:+.2} ms | - | - |",
        lb99 - d99
    );
    println!(
        "| publish QoS 0 | {:.0} msg/s | {:.0} msg/s | {:.0} % | >= 90 % | {} |",
        q0_lb.rate(),
        q0_direct.rate(),
        r0 * 100.0,
        yes_no(r0 >= 0.9)
    );
    println!(
        "| publish QoS 1 | {:.0} msg/s | {:.0} msg/s | {:.0} % | >= 90 % | {} |",
        q1_lb.rate(),
        q1_direct.rate(),
        r1 * 100.0,
        yes_no(r1 >= 0.9)
    );
    println!();
    println!("CPU seconds per 100 000 messages");
    println!("| path | broker (beam.smp) | HAProxy | test process (client) |");
    println!("|---|---|---|---|");
    for (what, runs) in [
        ("QoS 0 LB", &q0_lb),
        ("QoS 0 direct", &q0_direct),
        ("QoS 1 LB", &q1_lb),
        ("QoS 1 direct", &q1_direct),
    ] {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} |",
            runs.per_100k(runs.broker_cpu),
            runs.per_100k(runs.lb_cpu),
            runs.per_100k(runs.client_cpu)
        );
    }
    stop.cancel();
    let _ = operator.await;
}

/// The packets the benchmark sends are the ones it means (rumqttc's encoder, our flags).
#[test]
fn the_benchmark_speaks_mqtt_3_1_1() {
    assert_eq!(
        mqtt::connect("a"),
        [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a']
    );
    let mut p = Vec::new();
    mqtt::publish(&mut p, "t", Some(7), b"x");
    assert_eq!(p, [0x32, 6, 0, 1, b't', 0, 7, b'x']);
    assert!(mqtt::accepted(&[0x20, 0x02, 0x00, 0x00]));
    assert!(!mqtt::accepted(&[0x20, 0x02, 0x00, 0x05]));
    let mut two_acks = bytes::BytesMut::from(&[0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40][..]);
    assert_eq!(mqtt::take_packets(&mut two_acks).len(), 2);
    assert_eq!(&two_acks[..], [0x40], "an incomplete packet stays");
}
