//! Runs the controller while this replica holds the leader lease. Shared by the binary and the
//! integration tests, so that both exercise the same path.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::ListParams;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use mooring_crds::BrokerCluster;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::collector;
use crate::context::{Context, State};
use crate::controller::{self, Scope};
use crate::leader::{self, LeaseConfig};

/// Campaigns for the lease and runs the controller while leading; steps down and campaigns again
/// when the lease is lost; returns on shutdown (releasing the lease).
pub async fn lead_and_control(
    client: Client,
    state: Arc<State>,
    lease: LeaseConfig,
    scope: Scope,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let manager = leader::manager(client.clone(), &lease)
        .await
        .context("creating the leader lease manager")?;
    let (mut leading, lease_task) = manager.watch().await;
    info!(lease = %lease.name, identity = %lease.identity, "campaigning for leadership");
    loop {
        let became_leader = tokio::select! {
            _ = shutdown.cancelled() => false,
            ok = leader::wait_for(&mut leading, true) => ok,
        };
        if !became_leader {
            break;
        }
        info!("leading: starting the controller");
        state.metrics.leader.set(1);
        leader::label_own_pod(&client, &lease.namespace, &lease.identity, true).await;
        let mut ctx = Context::new(
            client.clone(),
            Reporter {
                controller: "mooring".into(),
                instance: Some(lease.identity.clone()),
            },
            state.clone(),
        );
        ctx.lb_images = scope.lb_images.clone();
        let ctx = Arc::new(ctx);
        let stop = {
            let shutdown = shutdown.clone();
            let mut leading = leading.clone();
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {},
                    _ = leader::wait_for(&mut leading, false) => {},
                }
            }
        };
        // Telemetry and alerts while leading (one collector per watched namespace); they stop
        // with the membership monitors.
        let collectors: Vec<_> = scope
            .watches()
            .into_iter()
            .map(|ns| {
                tokio::spawn(collector::run(
                    ctx.clone(),
                    ns,
                    ctx.membership.shutdown.child_token(),
                ))
            })
            .collect();
        controller::run(ctx, scope.clone(), stop).await;
        for collector in collectors {
            if let Err(e) = collector.await {
                warn!(error = %e, "telemetry collector task failed");
            }
        }
        state.metrics.leader.set(0);
        leader::label_own_pod(&client, &lease.namespace, &lease.identity, false).await;
        if shutdown.is_cancelled() {
            break;
        }
        warn!("lost the lease: controller stopped, campaigning again");
    }
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => info!("lease released"),
        Ok(Err(e)) => warn!(error = %e, "lease manager ended with an error"),
        Err(e) => warn!(error = %e, "lease task failed"),
    }
    Ok(())
}

/// Waits until BrokerClusters can be listed (the CRD is installed) in each of `namespaces`, or
/// in every namespace when it is empty (an operator limited to some namespaces may hold no
/// cluster-wide right). False on shutdown.
pub async fn wait_for_crd(
    client: &Client,
    namespaces: &[String],
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(500);
    let mut pending = controller::watches(namespaces);
    loop {
        let mut still = Vec::new();
        for ns in pending {
            let api: Api<BrokerCluster> = controller::scoped_api(client, ns.as_deref());
            if let Err(e) = api.list_metadata(&ListParams::default().limit(1)).await {
                warn!(namespace = ns.as_deref().unwrap_or("(all)"), error = %e,
                    "cannot list BrokerClusters yet; is the CRD installed, and may the operator list them there?");
                still.push(ns);
            }
        }
        if still.is_empty() {
            return true;
        }
        pending = still;
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {},
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
