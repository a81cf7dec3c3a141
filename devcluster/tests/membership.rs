//! Continuous membership repair, end to end on a devcluster with real RabbitMQ nodes and
//! mosquitto clients; the operator's controller runs in-process.
//!
//! On one 3-node cluster (persistence on), in order:
//! 1. a node reset to standalone is a stray: with repair disabled it is reported (and a message
//!    published on node 1 does NOT reach a subscriber on node 3); once repair is enabled it is
//!    rejoined, and the message crosses the cluster again;
//! 2. a node killed (`kill -9`) and restarted is a member again;
//! 3. a node the cluster has forgotten (`forget_cluster_node`), which then fails to boot with
//!    `inconsistent_cluster`, has its data moved aside and is a member again;
//! 4. a stray found during a rolling update is repaired only after the rollout.
//!
//! Then on a 2-node cluster: 5. two partitions without a majority: no repair, `Degraded`, and
//! an alert.
//!
//! Needs root, the control-plane binaries and Debian's `rabbitmq-server` (as `pods.rs`).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;

mod support;
use support::brokers::*;
use support::wait_for_every;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_is_repaired_continuously_and_safely() {
    let (env, stop, operator) = Env::start("members").await;
    let name = "bus";
    // autoheal rather than pause_minority (Mooring's default from 3 nodes): in step 4 a stray
    // leaves two members, and under pause_minority the one left running while the other
    // restarts for the rollout pauses itself (RabbitMQ's rule, not Mooring's), so the rollout
    // could not finish.
    let bc = env
        .create_spec(
            name,
            serde_json::json!({
                "replicas": 3,
                "persistence": {"enabled": true, "size": "1Gi"},
                "repair": {"intervalSeconds": 3},
                "configOverrides": {"cluster_partition_handling": "autoheal"},
            }),
        )
        .await;
    let (ip0, ip2) = (env.pod_ip("bus-0").await, env.pod_ip("bus-2").await);
    assert!(
        eventually_crosses(&ip2, &ip0, "check/start", Duration::from_secs(90)).await,
        "a message published on node 1 reaches a subscriber on node 3 in a healthy cluster"
    );

    // 1. A node reset to standalone. First with repair disabled: reported, not repaired.
    env.patch(name, serde_json::json!({"repair": {"enabled": false}}))
        .await;
    env.make_standalone(&bc, 2).await;
    env.dc.elapsed("bus-2 reset to standalone");
    let seen = env
        .wait(
            name,
            "bus-2 reported Stray",
            Duration::from_secs(60),
            |bc| {
                member_state(bc, "bus-2").as_deref() == Some("Stray")
                    && condition(bc, "MembershipConsistent").is_some_and(|c| {
                        c.0 == "False" && c.1 == "StrayNode" && c.2.contains("repair is disabled")
                    })
            },
        )
        .await;
    assert_eq!(
        condition(&seen, "Degraded").map(|c| (c.0, c.1)),
        Some(("True".into(), "MembershipInconsistent".into()))
    );
    assert!(
        env.state
            .alerts
            .of_cluster(&format!("{NS}/{name}"))
            .iter()
            .any(|a| a.name == "MembershipInconsistent"),
        "an alert fires while a node is out of the cluster"
    );
    let stray_view = members(&seen)
        .into_iter()
        .find(|m| m.pod == "bus-2")
        .expect("bus-2 in status.members")
        .view;
    assert_eq!(stray_view, [node(name, 2)], "the stray sees only itself");
    assert!(
        !crosses(&ip2, &ip0, "check/stray", Duration::from_secs(5)).await,
        "while bus-2 is a stray, its subscribers miss messages published on bus-0"
    );
    env.dc.elapsed("stray reported; messages do not cross");

    let enabled_at = Instant::now();
    env.patch(name, serde_json::json!({"repair": {"enabled": true}}))
        .await;
    let repaired = env
        .wait(name, "bus-2 rejoined", REPAIR_WITHIN, healthy)
        .await;
    env.dc.elapsed(&format!(
        "stray rejoined {:.1} s after repair was enabled",
        enabled_at.elapsed().as_secs_f64()
    ));
    let m2 = members(&repaired)
        .into_iter()
        .find(|m| m.pod == "bus-2")
        .expect("bus-2 in status.members");
    assert!(
        m2.last_repair_result
            .as_deref()
            .is_some_and(|r| r.contains("join stray node") && r.contains("done")),
        "{m2:?}"
    );
    assert!(m2.last_repair_time.is_some());
    assert!(!env.events(name, "Repaired").await.is_empty());
    assert!(!env.events(name, "StrayNode").await.is_empty());
    assert!(
        eventually_crosses(&ip2, &ip0, "check/rejoined", Duration::from_secs(90)).await,
        "after the repair a message published on node 1 reaches a subscriber on node 3"
    );
    assert!(env
        .state
        .alerts
        .of_cluster(&format!("{NS}/{name}"))
        .is_empty());

    // 2. A node killed and restarted is a member again.
    let before = restarts(&env.pod("bus-1").await);
    env.kill_vm("bus-1").await;
    env.dc.elapsed("bus-1 killed");
    wait_for_every(POLL, "bus-1 restarted", Duration::from_secs(60), || async {
        (restarts(&env.pod("bus-1").await) > before).then_some(())
    })
    .await;
    env.wait(name, "bus-1 a member again", REPAIR_WITHIN, healthy)
        .await;
    env.dc.elapsed("bus-1 restarted and a member again");

    // 3. A node the cluster forgot cannot boot (inconsistent_cluster); Mooring moves its data
    //    aside, it starts empty and joins.
    let bc = env.clusters.get(name).await.expect("the cluster");
    let (n0, n1) = (node(name, 0), node(name, 1));
    env.sh(
        &bc,
        &format!(
            "rabbitmqctl -q -l -n {n1} stop_app && rabbitmqctl -q -l -n {n0} forget_cluster_node {n1}"
        ),
    )
    .await;
    env.kill_vm("bus-1").await;
    env.dc.elapsed("bus-1 forgotten by the cluster and killed");
    let forgotten = env
        .wait(
            name,
            "bus-1 reported Forgotten or repaired",
            REPAIR_WITHIN,
            |bc| {
                member_state(bc, "bus-1").as_deref() == Some("Forgotten")
                    || members(bc).iter().any(|m| {
                        m.pod == "bus-1"
                            && m.last_repair_result
                                .as_deref()
                                .is_some_and(|r| r.contains("move aside"))
                    })
            },
        )
        .await;
    env.dc
        .elapsed(&format!("bus-1: {:?}", member_state(&forgotten, "bus-1")));
    let back = env
        .wait(
            name,
            "bus-1 back after its data was moved aside",
            REPAIR_WITHIN,
            healthy,
        )
        .await;
    let m1 = members(&back)
        .into_iter()
        .find(|m| m.pod == "bus-1")
        .expect("bus-1");
    assert!(
        m1.last_repair_result
            .as_deref()
            .is_some_and(|r| r.contains("move aside") && r.contains("done")),
        "{m1:?}"
    );
    assert!(
        env.events(name, "ForgottenNode")
            .await
            .iter()
            .any(|(_, n)| n.contains(&n1)),
        "a ForgottenNode event names bus-1"
    );
    env.dc.elapsed("forgotten node back in the cluster");

    // 4. A stray found during a rolling update is repaired only after the rollout.
    env.patch(name, serde_json::json!({"repair": {"enabled": false}}))
        .await;
    let bc = env.clusters.get(name).await.expect("the cluster");
    env.make_standalone(&bc, 0).await;
    env.wait(
        name,
        "bus-0 reported Stray",
        Duration::from_secs(60),
        |bc| member_state(bc, "bus-0").as_deref() == Some("Stray"),
    )
    .await;
    // The rollout: a configuration change.
    env.patch(
        name,
        serde_json::json!({"configOverrides": {
            "cluster_partition_handling": "autoheal",
            "mqtt.prefetch": "20",
        }}),
    )
    .await;
    let sts_api: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    let rolling = |s: &StatefulSet| {
        let st = s.status.clone().unwrap_or_default();
        st.current_revision != st.update_revision
            || st.updated_replicas.unwrap_or(0) < 3
            || st.observed_generation != s.metadata.generation
    };
    wait_for_every(
        POLL,
        "the rollout started",
        Duration::from_secs(30),
        || async {
            sts_api
                .get(name)
                .await
                .ok()
                .filter(|s| rolling(s))
                .map(|_| ())
        },
    )
    .await;
    env.patch(name, serde_json::json!({"repair": {"enabled": true}}))
        .await;
    env.dc.elapsed("rollout started; repair enabled");
    // While the rollout runs, bus-0 must never be joined (the repair waits); record what the
    // status said about it.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let rollout_done = wait_for_every(
        POLL,
        "the rollout finished",
        Duration::from_secs(300),
        || {
            let seen = &seen;
            let (sts_api, clusters) = (&sts_api, &env.clusters);
            async move {
                let s = sts_api.get(name).await.ok()?;
                let done = !rolling(&s);
                if !done {
                    if let Some(state) = clusters
                        .get(name)
                        .await
                        .ok()
                        .and_then(|bc| member_state(&bc, "bus-0"))
                    {
                        seen.lock().expect("the set").insert(state);
                    }
                }
                done.then(k8s_openapi::jiff::Timestamp::now)
            }
        },
    )
    .await;
    let seen = seen.into_inner().expect("the set");
    env.dc
        .elapsed(&format!("rollout finished; bus-0 was {seen:?} during it"));
    assert!(
        !seen.contains("Joined"),
        "bus-0 was not joined during the rollout: {seen:?}"
    );
    assert!(seen.contains("Stray"), "bus-0 was reported Stray: {seen:?}");
    env.wait(
        name,
        "bus-0 rejoined after the rollout",
        REPAIR_WITHIN,
        healthy,
    )
    .await;
    let repairs: Vec<_> = env
        .events(name, "Repaired")
        .await
        .into_iter()
        .filter(|(_, n)| n.starts_with(&format!("join stray node {} ", node(name, 0))))
        .collect();
    assert!(!repairs.is_empty(), "bus-0 was repaired");
    for (t, note) in &repairs {
        // Event times have microseconds; the test saw the rollout end within a poll.
        assert!(
            *t + Duration::from_secs(1) >= rollout_done,
            "repaired at {t} during the rollout (done at {rollout_done}): {note}"
        );
    }
    env.dc.elapsed("stray repaired after the rollout");
    env.clusters
        .delete(name, &Default::default())
        .await
        .expect("delete the cluster");

    // 5. Two partitions without a majority: no action, Degraded, an alert.
    let pair = "pair";
    let bc = env.create(pair, 2).await;
    // Repairs before the split do not count: a cold parallel boot of RabbitMQ 3.10 can leave
    // vhost '/' down on one node, which Mooring restarts while the pair forms.
    let split_started = k8s_openapi::jiff::Timestamp::now();
    env.make_standalone(&bc, 1).await;
    let split = env
        .wait(pair, "NoMajority", Duration::from_secs(60), |bc| {
            condition(bc, "MembershipConsistent").is_some_and(|c| c.1 == "NoMajority")
        })
        .await;
    assert_eq!(
        condition(&split, "Degraded").map(|c| (c.0, c.1)),
        Some(("True".into(), "NoMajorityPartition".into()))
    );
    assert!(env
        .state
        .alerts
        .of_cluster(&format!("{NS}/{pair}"))
        .iter()
        .any(|a| a.name == "MembershipNoMajority"));
    // Several checks later: still split, nothing attempted.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let later = env.clusters.get(pair).await.expect("the pair");
    assert_eq!(
        condition(&later, "MembershipConsistent").map(|c| c.1),
        Some("NoMajority".into())
    );
    let attempted: Vec<_> = env
        .events(pair, "Repairing")
        .await
        .into_iter()
        .filter(|(t, _)| *t >= split_started)
        .collect();
    assert!(
        attempted.is_empty(),
        "no repair without a majority: {attempted:?}"
    );
    assert!(!env.events(pair, "AlertFiring").await.is_empty());
    env.dc
        .elapsed("no majority: left alone, degraded, alerting");

    stop.cancel();
    operator
        .await
        .expect("operator task")
        .expect("the operator stopped cleanly");
}
