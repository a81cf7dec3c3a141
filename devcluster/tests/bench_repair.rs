//! Benchmark (run by `scripts/bench`, ignored by the test run): how fast membership repair
//! notices and fixes a stray node, on a devcluster with a real 3-node RabbitMQ cluster.
//!
//! Each run resets one node and starts it with no peers to discover (it runs as a cluster of its
//! own, so clients on it would miss messages); from the moment that node is running outside the
//! cluster, it measures until the BrokerCluster's status reports it `Stray` (detected) and until
//! the status is consistent again with every node `Joined` (repaired). Prints the median and
//! the spread over the runs (`MOORING_BENCH_REPAIR_RUNS`, default 10).
//!
//! Needs root, the control-plane binaries and Debian's `rabbitmq-server`.

use std::time::{Duration, Instant};

mod support;
use support::brokers::*;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/bench"]
async fn bench_membership_repair() {
    let runs: usize = std::env::var("MOORING_BENCH_REPAIR_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (env, stop, operator) = Env::start("benchrep").await;
    let name = "bench";
    // The default check interval (5 s), as users get it.
    env.create_with(name, 3, 5).await;
    let (mut detected, mut repaired) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let ordinal = u32::try_from(run % 3).expect("a small ordinal");
        let pod = format!("{name}-{ordinal}");
        let bc = env.clusters.get(name).await.expect("the cluster");
        env.make_standalone(&bc, ordinal).await;
        let left = Instant::now();
        env.wait(name, "the stray detected", Duration::from_secs(120), |bc| {
            member_state(bc, &pod).as_deref() == Some("Stray")
        })
        .await;
        let d = left.elapsed().as_secs_f64();
        env.wait(
            name,
            "the stray repaired",
            Duration::from_secs(180),
            healthy,
        )
        .await;
        let r = left.elapsed().as_secs_f64();
        println!(
            "run {}: {pod} detected after {d:.1} s, repaired after {r:.1} s",
            run + 1
        );
        detected.push(d);
        repaired.push(r);
    }
    let (min_d, max_d) = (
        detected.iter().copied().fold(f64::MAX, f64::min),
        detected.iter().copied().fold(0.0, f64::max),
    );
    let (min_r, max_r) = (
        repaired.iter().copied().fold(f64::MAX, f64::min),
        repaired.iter().copied().fold(0.0, f64::max),
    );
    let (md, mr) = (median(&mut detected), median(&mut repaired));
    println!();
    println!("membership repair, 3-node RabbitMQ 3.10 on devcluster, {runs} runs (check interval 5 s, the default)");
    println!("| figure | median | min | max | aim |");
    println!("|---|---|---|---|---|");
    println!("| node left -> detected (status Stray) | {md:.1} s | {min_d:.1} s | {max_d:.1} s | <= 5 s |");
    println!("| node left -> repaired (all Joined) | {mr:.1} s | {min_r:.1} s | {max_r:.1} s | <= 30 s |");
    stop.cancel();
    let _ = operator.await;
}
