//! Leader election as the chart runs it: two operator replicas that start at the same moment on a
//! real kube-apiserver never both lead.
//!
//! The lease is taken with server-side apply; the API server refuses the second writer only when
//! the two use different field managers. With one shared field manager both replicas "took" the
//! same free Lease and both ran the controller (found by the Helm install on devcluster: each
//! generated its own Erlang cookie and the RabbitMQ nodes could not cluster).

use std::time::Duration;

use anyhow::{ensure, Result};
use mooring_operator::leader::{self, LeaseConfig};
use mooring_tests::{create_unique_namespace, ControlPlaneOptions, SharedControlPlane};

static CP: SharedControlPlane = SharedControlPlane::new(ControlPlaneOptions::default);

#[tokio::test]
async fn two_replicas_started_together_never_both_lead() -> Result<()> {
    let cp = CP.get().await?;
    let client = cp.client().await?;
    let ns = create_unique_namespace(&client, "leader").await?;
    for round in 0..5 {
        let name = format!("race-{round}");
        let cfg = |identity: &str| LeaseConfig {
            name: name.clone(),
            namespace: ns.clone(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
        };
        let (a, b) = (cfg("replica-a"), cfg("replica-b"));
        let (ma, mb) = tokio::try_join!(
            leader::manager(client.clone(), &a),
            leader::manager(client.clone(), &b)
        )?;
        let ((rx_a, task_a), (rx_b, task_b)) = tokio::join!(ma.watch(), mb.watch());
        // Long enough for both to campaign and for a loser to notice it lost.
        let mut both = 0;
        let mut one = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match (*rx_a.borrow(), *rx_b.borrow()) {
                (true, true) => both += 1,
                (true, false) | (false, true) => one += 1,
                (false, false) => {}
            }
        }
        drop((rx_a, rx_b));
        let _ = tokio::join!(task_a, task_b);
        ensure!(
            both == 0,
            "round {round}: both replicas led at once ({both} of 20 samples)"
        );
        ensure!(one > 0, "round {round}: no replica ever led");
    }
    Ok(())
}
