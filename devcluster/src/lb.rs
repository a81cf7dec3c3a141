//! The LoadBalancer forwarder (what `minikube tunnel` does): every TCP port of a Service of type
//! LoadBalancer (without a `loadBalancerClass`) is served on 127.0.0.1:<port> and forwarded to a
//! ready endpoint of the Service (its EndpointSlices, round robin; pod IPs are reachable from the
//! host through the bridge), and the Service gets `status.loadBalancer.ingress: [{ip: 127.0.0.1}]`.
//! Also [`forward_api`], which makes the API server reachable from the pods.
//!
//! A port that cannot be listened on (taken by another program, or by an older Service that asks
//! for the same port) is reported in a log line and a Warning Event on the Service, and retried
//! every few seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client, Resource as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use mooring_localkube::IoContext as _;

use crate::Result;

/// The address LoadBalancer Services get, and where their ports listen.
pub const INGRESS_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Events' reporting controller.
const REPORTER: &str = "devcluster-lb";
/// How often listeners that failed are retried (and everything is checked again).
const RESYNC: Duration = Duration::from_secs(5);
/// How long a connection to one endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where one local port forwards to: a Service's port, by its name (`""` when unnamed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: ServiceKey,
    pub port_name: String,
}

/// A Service port that cannot have its local port because an older Service has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub port: u16,
    pub loser: ServiceKey,
    pub winner: ServiceKey,
}

fn key_of(svc: &Service) -> Option<ServiceKey> {
    Some(ServiceKey {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
    })
}

/// Whether this forwarder serves `svc`: type LoadBalancer, no `loadBalancerClass`, not deleting.
pub fn is_served(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc.spec.as_ref().is_some_and(|s| {
            s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
        })
}

/// Which local port goes to which Service port. When two Services ask for the same port, the
/// older one (then the first by namespace/name) has it and the other is a [`Conflict`].
pub fn desired_listeners(services: &[Arc<Service>]) -> (BTreeMap<u16, Target>, Vec<Conflict>) {
    let mut served: Vec<&Service> = services
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| is_served(s))
        .collect();
    served.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            key_of(s),
        )
    });
    let mut desired = BTreeMap::new();
    let mut conflicts = Vec::new();
    for svc in served {
        let Some(key) = key_of(svc) else { continue };
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        for p in ports {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let target = Target {
                service: key.clone(),
                port_name: p.name.unwrap_or_default(),
            };
            match desired.get(&port) {
                Some(Target { service, .. }) if *service != key => conflicts.push(Conflict {
                    port,
                    loser: key.clone(),
                    winner: service.clone(),
                }),
                Some(_) => {}
                None => {
                    desired.insert(port, target);
                }
            }
        }
    }
    (desired, conflicts)
}

/// The ready endpoints of `target` (ready or unknown readiness, IPv4), in a stable order.
pub fn ready_backends(slices: &[Arc<EndpointSlice>], target: &Target) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        let ours = slice.metadata.namespace.as_deref() == Some(target.service.namespace.as_str())
            && slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|n| *n == target.service.name);
        if !ours || slice.address_type != "IPv4" {
            continue;
        }
        let port = slice
            .ports
            .as_ref()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == target.port_name)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            if let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether the Service's status already says `ingress: [{ip: 127.0.0.1}]`.
fn has_our_ingress(svc: &Service) -> bool {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    match ingress.map(|v| v.as_slice()) {
        Some([only]) => {
            only.ip.as_deref() == Some(&INGRESS_IP.to_string()) && only.hostname.is_none()
        }
        _ => false,
    }
}

struct Active {
    target: Target,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

struct Balancer {
    client: Client,
    recorder: Recorder,
    slices: Store<EndpointSlice>,
    shutdown: CancellationToken,
    active: BTreeMap<u16, Active>,
    /// The last failure reported per (Service, port), so that each is reported once.
    reported: HashMap<(ServiceKey, u16), String>,
}

impl Balancer {
    async fn reconcile(&mut self, services: &[Arc<Service>]) {
        let (desired, conflicts) = desired_listeners(services);

        let stale: Vec<u16> = self
            .active
            .iter()
            .filter(|(port, a)| desired.get(port) != Some(&a.target))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(a) = self.active.remove(&port) {
                a.cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(1), a.task).await;
                tracing::info!(
                    "stopped forwarding 127.0.0.1:{port} (Service {} port {:?})",
                    a.target.service,
                    a.target.port_name
                );
            }
        }

        for (port, target) in &desired {
            if self.active.contains_key(port) {
                continue;
            }
            match TcpListener::bind((INGRESS_IP, *port)).await {
                Ok(listener) => {
                    tracing::info!(
                        "forwarding 127.0.0.1:{port} to Service {} port {:?}",
                        target.service,
                        target.port_name
                    );
                    self.reported.remove(&(target.service.clone(), *port));
                    let cancel = self.shutdown.child_token();
                    let slices = self.slices.clone();
                    let t = target.clone();
                    let label = format!("Service {} port {port}", target.service);
                    let task = tokio::spawn(serve(
                        listener,
                        move || ready_backends(&slices.state(), &t),
                        label,
                        cancel.clone(),
                    ));
                    self.active.insert(
                        *port,
                        Active {
                            target: target.clone(),
                            cancel,
                            task,
                        },
                    );
                }
                Err(e) => {
                    let reason = if e.kind() == std::io::ErrorKind::AddrInUse {
                        "PortInUse"
                    } else {
                        "ListenFailed"
                    };
                    let note = format!("cannot listen on 127.0.0.1:{port}: {e}");
                    self.report(services, &target.service, *port, reason, note)
                        .await;
                }
            }
        }

        for c in &conflicts {
            let note = format!(
                "127.0.0.1:{} already forwards to the older Service {}",
                c.port, c.winner
            );
            self.report(services, &c.loser, c.port, "PortInUse", note)
                .await;
        }
        self.reported.retain(|(svc, port), _| {
            desired.get(port).is_some_and(|t| t.service == *svc)
                || conflicts.iter().any(|c| c.loser == *svc && c.port == *port)
        });

        for svc in services {
            let Some(key) = key_of(svc) else { continue };
            let body = if is_served(svc) && !has_our_ingress(svc) {
                serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": INGRESS_IP.to_string()}]}}})
            } else if !is_served(svc)
                && has_our_ingress(svc)
                && svc.metadata.deletion_timestamp.is_none()
            {
                // No longer a LoadBalancer (or claimed by another class): take the address back.
                serde_json::json!({"status": {"loadBalancer": {"ingress": null}}})
            } else {
                continue;
            };
            let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => tracing::info!("Service {key}: loadBalancer ingress updated"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!("Service {key}: cannot update its status: {e}"),
            }
        }
    }

    /// A log line and a Warning Event on the Service, once per (Service, port, message).
    async fn report(
        &mut self,
        services: &[Arc<Service>],
        key: &ServiceKey,
        port: u16,
        reason: &str,
        note: String,
    ) {
        let slot = (key.clone(), port);
        if self.reported.get(&slot) == Some(&note) {
            return;
        }
        tracing::warn!("Service {key}: {note}");
        let svc = services.iter().find(|s| key_of(s).as_ref() == Some(key));
        if let Some(svc) = svc {
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: reason.to_string(),
                note: Some(note.clone()),
                action: "Listen".to_string(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &svc.object_ref(&())).await {
                tracing::warn!("Service {key}: cannot record an Event: {e}");
            }
        }
        self.reported.insert(slot, note);
    }

    async fn stop_all(&mut self) {
        for (_, a) in std::mem::take(&mut self.active) {
            a.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), a.task).await;
        }
    }
}

/// Runs the forwarder until `shutdown` is cancelled. Watch errors are retried with backoff.
pub async fn run(client: Client, shutdown: CancellationToken) -> Result<()> {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_events = reflector::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let slice_events = reflector::reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        ),
    )
    .default_backoff();
    let slice_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(slice_events);
        while let Some(e) = events.next().await {
            if let Err(e) = e {
                tracing::warn!("EndpointSlice watch: {e}");
            }
        }
    });

    let mut balancer = Balancer {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTER.to_string(),
                instance: None,
            },
        ),
        client,
        slices,
        shutdown: shutdown.clone(),
        active: BTreeMap::new(),
        reported: HashMap::new(),
    };
    let mut svc_events = std::pin::pin!(svc_events.map_err(|e| e.to_string()));
    let mut resync = tokio::time::interval(RESYNC);
    let mut synced = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = svc_events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => synced = true,
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!("Service watch: {e}");
                    continue;
                }
                None => break,
            },
            _ = resync.tick() => {}
        }
        if synced {
            balancer.reconcile(&services.state()).await;
        }
    }
    balancer.stop_all().await;
    slice_task.abort();
    Ok(())
}

/// Forwards `listen` (the gateway and the API server's port: pods' `KUBERNETES_SERVICE_HOST` and
/// `_PORT`) to the API server at `target` (127.0.0.1) until `shutdown` is cancelled.
pub async fn forward_api(
    listen: SocketAddr,
    target: SocketAddr,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .io_context(|| format!("cannot listen on {listen} to forward the API server"))?;
    tracing::info!("forwarding {listen} to the API server at {target}");
    serve(
        listener,
        move || vec![target],
        "the API server".to_string(),
        shutdown,
    )
    .await;
    Ok(())
}

/// Accepts connections until `cancel`; each goes to one of `backends()` (round robin, the next
/// one when a connection fails) and is closed when `cancel` fires.
async fn serve<B>(listener: TcpListener, backends: B, label: String, cancel: CancellationToken)
where
    B: Fn() -> Vec<SocketAddr> + Send + Sync + 'static,
{
    let backends = Arc::new(backends);
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((inbound, peer)) => {
                let candidates = backends();
                let start = next.fetch_add(1, Ordering::Relaxed);
                let cancel = cancel.child_token();
                let label = label.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        () = proxy(inbound, peer, &candidates, start, &label) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!("{label}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn proxy(
    mut inbound: TcpStream,
    peer: SocketAddr,
    candidates: &[SocketAddr],
    start: usize,
    label: &str,
) {
    if candidates.is_empty() {
        tracing::warn!("{label}: no ready endpoint for the connection from {peer}");
        return;
    }
    for i in 0..candidates.len() {
        let backend = candidates[(start + i) % candidates.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(mut outbound)) => {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                    tracing::debug!("{label}: {peer} <-> {backend}: {e}");
                }
                return;
            }
            Ok(Err(e)) => tracing::warn!("{label}: cannot connect to {backend}: {e}"),
            Err(_) => {
                tracing::warn!("{label}: no connection to {backend} within {CONNECT_TIMEOUT:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn svc(ns: &str, name: &str, type_: &str, ports: &[(&str, i32)], age_s: i64) -> Arc<Service> {
        let created = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age_s).unwrap();
        Arc::new(Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                creation_timestamp: Some(Time(created)),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn only_load_balancers_get_ports_and_the_older_wins() {
        let services = vec![
            svc(
                "iot",
                "bus",
                "LoadBalancer",
                &[("mqtt", 1883), ("ws", 8083)],
                10,
            ),
            svc("iot", "internal", "ClusterIP", &[("mqtt", 1884)], 20),
            svc("b", "newer", "LoadBalancer", &[("", 1883)], 5),
        ];
        let (desired, conflicts) = desired_listeners(&services);
        assert_eq!(desired.keys().copied().collect::<Vec<_>>(), [1883, 8083]);
        assert_eq!(
            desired[&1883],
            Target {
                service: key("iot", "bus"),
                port_name: "mqtt".into()
            }
        );
        assert_eq!(
            conflicts,
            [Conflict {
                port: 1883,
                loser: key("b", "newer"),
                winner: key("iot", "bus")
            }]
        );
    }

    fn slice(
        ns: &str,
        svc: &str,
        port: (&str, i32),
        eps: &[(&str, Option<bool>)],
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-abc")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(port.0.into()),
                port: Some(port.1),
                ..Default::default()
            }]),
        })
    }

    #[test]
    fn backends_are_the_ready_endpoints_of_the_named_port() {
        let slices = vec![
            slice(
                "iot",
                "bus",
                ("mqtt", 1883),
                &[
                    ("10.244.0.3", Some(true)),
                    ("10.244.0.2", None),
                    ("10.244.0.4", Some(false)),
                ],
            ),
            slice("iot", "bus", ("ws", 8083), &[("10.244.0.3", Some(true))]),
            slice(
                "other",
                "bus",
                ("mqtt", 1883),
                &[("10.244.0.9", Some(true))],
            ),
        ];
        let target = Target {
            service: key("iot", "bus"),
            port_name: "mqtt".into(),
        };
        let got = ready_backends(&slices, &target);
        let want: Vec<SocketAddr> = vec![
            "10.244.0.2:1883".parse().unwrap(),
            "10.244.0.3:1883".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn ingress_detection() {
        let mut s = (*svc("a", "b", "LoadBalancer", &[("", 1)], 0)).clone();
        assert!(!has_our_ingress(&s));
        s.status = Some(
            serde_json::from_value(
                serde_json::json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}),
            )
            .unwrap(),
        );
        assert!(has_our_ingress(&s));
    }

    #[tokio::test]
    async fn serve_forwards_round_robin_and_stops() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut backends = Vec::new();
        for tag in [b'a', b'b'] {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            backends.push(l.local_addr().unwrap());
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    let _ = s.write_all(&[tag]).await;
                }
            });
        }
        let front = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let list = backends.clone();
        let task = tokio::spawn(serve(
            front,
            move || list.clone(),
            "test".into(),
            cancel.clone(),
        ));
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            seen.push(b[0]);
        }
        seen.sort();
        assert_eq!(seen, b"ab");
        cancel.cancel();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
