//! The production [`CommandRunner`]: each command runs in a command Pod of the cluster (see
//! [`crate::pod_command`]), built from the newest BrokerCluster the controller has seen.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Client;
use mooring_crds::BrokerCluster;
use tokio::sync::watch;

use super::CommandRunner;
use crate::pod_command::{self, CommandOutput, PodCommandError};

/// Runs commands in command Pods of one cluster.
pub struct PodCommandRunner {
    client: Client,
    cluster: watch::Receiver<Arc<BrokerCluster>>,
}

impl PodCommandRunner {
    /// A runner for the cluster `cluster` follows.
    pub fn new(client: Client, cluster: watch::Receiver<Arc<BrokerCluster>>) -> Self {
        Self { client, cluster }
    }
}

impl CommandRunner for PodCommandRunner {
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        data_of: Option<&'a str>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, PodCommandError>> {
        let bc = self.cluster.borrow().clone();
        Box::pin(
            async move { pod_command::run_with(&self.client, &bc, &argv, timeout, data_of).await },
        )
    }
}
