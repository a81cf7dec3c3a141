//! Benchmark (ignored; `scripts/bench` runs it as root): what one telemetry round costs the
//! operator per polled node, against a real 3-node RabbitMQ cluster on devcluster with two
//! metered topics: the collector's own `collect` (node figures of every node, topic figures and
//! alarms from one), back to back, timing each round and the process's CPU time, minus the CPU
//! the idle operator uses over the same time. Prints one table.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use mooring_operator::collector::poller::{collect, targets, INTERVAL};
use mooring_operator::collector::sample::{NodeSample, HISTORY_LEN};
use mooring_operator::context::State;
use mooring_operator::drivers::cluster::for_cluster;

use support::brokers::{Env, NS};

const ROUNDS: usize = 30;

/// User + system CPU time of this process (every thread).
fn cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage and RUSAGE_SELF.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::test]
#[ignore = "benchmark: scripts/bench runs it (root, devcluster)"]
async fn telemetry_cost_per_polled_node() {
    let (env, stop, operator) = Env::start("bench-telemetry").await;
    let bc = env
        .create_spec(
            "tele",
            serde_json::json!({
                "replicas": 3,
                "monitoring": {"meteredTopics": ["bench/a", "bench/b"]},
            }),
        )
        .await;
    let pods: Vec<Arc<Pod>> = Api::<Pod>::namespaced(env.client.clone(), NS)
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=tele,app.kubernetes.io/component=broker"),
        )
        .await
        .expect("list the broker Pods")
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(bc.clone()));
    let driver = for_cluster(&env.client, &bc, rx).await.expect("a driver");
    let state = State::new();
    let metrics = &state.metrics;
    let nodes = targets(&bc, &pods);
    assert_eq!(nodes.len(), 3);
    for _ in 0..3 {
        let s = collect(&driver, &bc, nodes.clone(), metrics).await;
        assert!(s.nodes.iter().all(|n| n.up), "every node answers: {s:?}");
    }

    // The idle operator's own CPU (its collector, monitors and controller) over the same time.
    let idle_for = Duration::from_secs(10);
    let (c0, t0) = (cpu(), Instant::now());
    tokio::time::sleep(idle_for).await;
    let idle_rate = (cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();

    let mut rounds = Vec::with_capacity(ROUNDS);
    let (c0, t0) = (cpu(), Instant::now());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let s = collect(&driver, &bc, nodes.clone(), metrics).await;
        rounds.push(started.elapsed());
        assert!(s.topics.is_some(), "topic figures");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let busy = ((cpu() - c0).as_secs_f64() - idle_rate * elapsed).max(0.0);
    rounds.sort();
    let per_node_cpu = Duration::from_secs_f64(busy / (ROUNDS * nodes.len()) as f64);
    let share = per_node_cpu.as_secs_f64() / INTERVAL.as_secs_f64() * 100.0;
    println!();
    println!(
        "telemetry, real 3-node RabbitMQ 3.10, 2 metered topics, {ROUNDS} rounds (aim: <= 5 ms CPU per node per round)"
    );
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| round (3 nodes), p50 / max | {:.1?} / {:.1?} |",
        rounds[ROUNDS / 2],
        rounds[ROUNDS - 1]
    );
    println!("| operator CPU per polled node per round | {per_node_cpu:.2?} ({share:.3} % of a core at one round per {INTERVAL:?}) |");
    println!(
        "| history per node | {} B per sample ({} B per hour of {HISTORY_LEN} samples) |",
        std::mem::size_of::<NodeSample>(),
        std::mem::size_of::<NodeSample>() * HISTORY_LEN
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
}
