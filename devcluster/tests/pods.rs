//! The node agent runs Pods for real, as processes: a 3-node RabbitMQ StatefulSet forms one
//! cluster (an MQTT message published on one node reaches a subscriber on another), a killed
//! broker restarts and rejoins, a deleted Pod comes back with its name, DNS name and data; and the
//! kubelet's semantics (env, volumes, probes, restarts, graceful termination, termination
//! messages, unmapped images) on small shell Pods.
//!
//! Needs root (network namespaces, mounts), the control-plane binaries (see `up_down.rs`),
//! Debian's `rabbitmq-server` and `mosquitto-clients`. Each test brings up its own devcluster
//! (state directory, ports, bridge, name prefixes and pod network of its own, see `support`) and takes it down again, also
//! when it fails (then the state directory with all logs is kept and its path printed).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

mod support;
use support::{wait_for, Devcluster};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Manifests are YAML 1.2 here (serde_yaml): file modes are written in decimal (256 = 0400,
/// 384 = 0600), a leading 0 is not octal.
fn parse<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).expect("a valid manifest")
}

async fn create<K>(client: &Client, namespace: &str, yaml: &str) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object: K = parse(yaml);
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("create an object")
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = parse(&format!("metadata: {{name: {name}}}"));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the pod has an IP")
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

/// The host pid of the container's PID 1 (the status' `devcluster://<pid>` container id).
fn pid1(pod: &Pod) -> u32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("devcluster://"))
        .and_then(|p| p.parse().ok())
        .expect("a running container id")
}

async fn get(api: &Api<Pod>, name: &str) -> Option<Pod> {
    api.get_opt(name).await.ok().flatten()
}

/// What each broker says about the cluster (for failure messages).
fn cluster_views(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            let out = Command::new("nsenter")
                .args([
                    "--target",
                    &pid1(p).to_string(),
                    "--net",
                    "--mount",
                    "--uts",
                    "--pid",
                ])
                .args(["--", "/bin/sh", "-c"])
                .arg(format!(
                    "HOME=/etc/rabbitmq/mooring-secrets /usr/lib/rabbitmq/bin/rabbitmqctl -l -q \
                     -n rabbit@{}.rmq-headless.{RABBITMQ_NS}.svc.cluster.local cluster_status",
                    p.metadata.name.as_deref().unwrap_or_default()
                ))
                .output();
            match out {
                Ok(o) => format!(
                    "--- {}:\n{}{}",
                    p.metadata.name.as_deref().unwrap_or_default(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("cannot run rabbitmqctl: {e}"),
            }
        })
        .collect()
}

/// Runs a command in the container's namespaces; its stdout.
fn in_container(pod: &Pod, script: &str) -> String {
    let out = Command::new("nsenter")
        .args([
            "--target",
            &pid1(pod).to_string(),
            "--net",
            "--mount",
            "--uts",
            "--pid",
        ])
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "`{script}` failed in the container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Subscribes on `sub_ip` and publishes on `pub_ip` (once a second, as the subscription may
/// not be in place yet) until the subscriber gets the message. A subscriber that ends without it
/// (a broker still settling its MQTT state refuses connections for a moment) is started again;
/// false after 60 s.
async fn mqtt_crosses(sub_ip: &str, pub_ip: &str, tag: &str) -> bool {
    let topic = format!("devcluster/{tag}");
    let message = format!("hello-{tag}-{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let sub = tokio::process::Command::new("mosquitto_sub")
            .args(["-h", sub_ip, "-p", "1883", "-V", "mqttv311", "-q", "1"])
            .args([
                "-i",
                &format!("sub-{tag}"),
                "-t",
                &topic,
                "-C",
                "1",
                "-W",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run mosquitto_sub (apt-get install mosquitto-clients)");
        let received = tokio::spawn(sub.wait_with_output());
        let publisher = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let out = tokio::process::Command::new("mosquitto_pub")
                    .args(["-h", pub_ip, "-p", "1883", "-V", "mqttv311", "-q", "1"])
                    .args(["-i", &format!("pub-{tag}"), "-t", &topic, "-m", &message])
                    .output()
                    .await
                    .expect("run mosquitto_pub");
                if !out.status.success() {
                    eprintln!(
                        "mosquitto_pub on {pub_ip}: {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
        };
        let out = tokio::select! {
            out = received => out,
            _ = publisher => unreachable!("the publisher loops"),
        };
        match out {
            Ok(Ok(out)) => {
                let got = String::from_utf8_lossy(&out.stdout);
                if got.trim() == message {
                    return true;
                }
                eprintln!(
                    "mosquitto_sub on {sub_ip} ended without the message ({}): {got:?} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            other => eprintln!("mosquitto_sub on {sub_ip}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

const RABBITMQ_NS: &str = "mq";

fn rabbitmq_manifests() -> [String; 4] {
    let nodes: String = (0..3)
        .map(|i| {
            format!(
                "    cluster_formation.classic_config.nodes.{} = rabbit@rmq-{i}.rmq-headless.{RABBITMQ_NS}.svc.cluster.local\n",
                i + 1
            )
        })
        .collect();
    [
        "
metadata: {name: rmq-headless}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: rmq}
  ports:
  - {name: mqtt, port: 1883}
  - {name: epmd, port: 4369}
  - {name: dist, port: 25672}
"
        .to_string(),
        format!(
            "
metadata: {{name: rmq-config}}
data:
  rabbitmq.conf: |
    cluster_formation.peer_discovery_backend = classic_config
{nodes}    loopback_users = none
    listeners.tcp.default = 5672
    mqtt.listeners.tcp.default = 1883
    mqtt.allow_anonymous = true
    vm_memory_high_watermark.absolute = 256MiB
  enabled_plugins: |
    [rabbitmq_mqtt].
"
        ),
        "
metadata: {name: rmq-cookie}
stringData: {.erlang.cookie: DEVCLUSTERPODSTESTCOOKIE42}
"
        .to_string(),
        format!(
            "
metadata: {{name: rmq}}
spec:
  serviceName: rmq-headless
  replicas: 3
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: rmq}}}}
  template:
    metadata: {{labels: {{app: rmq}}}}
    spec:
      terminationGracePeriodSeconds: 20
      containers:
      - name: rabbitmq
        image: rabbitmq:3.13-management
        command: [rabbitmq-server]
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: RABBITMQ_USE_LONGNAME, value: 'true'}}
        - {{name: RABBITMQ_NODENAME, value: 'rabbit@$(POD_NAME).rmq-headless.{RABBITMQ_NS}.svc.cluster.local'}}
        - {{name: RABBITMQ_CONFIG_FILE, value: /etc/rabbitmq/mooring/rabbitmq.conf}}
        - {{name: RABBITMQ_ENABLED_PLUGINS_FILE, value: /etc/rabbitmq/mooring/enabled_plugins}}
        - {{name: RABBITMQ_MNESIA_BASE, value: /var/lib/rabbitmq/mnesia}}
        - {{name: HOME, value: /etc/rabbitmq/mooring-secrets}}
        ports:
        - {{name: mqtt, containerPort: 1883}}
        # Ready means MQTT is served, not merely that the port is open: RabbitMQ 3.10 can accept
        # TCP on 1883 and still refuse every CONNECT ('server unavailable') while its client-id
        # tracker has not joined the cluster. A node stuck like that is restarted by liveness.
        readinessProbe:
          exec: {{command: [sh, -c, 'mosquitto_pub -h 127.0.0.1 -p 1883 -V mqttv311 -i \"probe-$(hostname)\" -t mooring/probe -n -q 0']}}
          initialDelaySeconds: 5
          periodSeconds: 2
          timeoutSeconds: 5
          failureThreshold: 3
        livenessProbe:
          exec: {{command: [sh, -c, 'mosquitto_pub -h 127.0.0.1 -p 1883 -V mqttv311 -i \"probe-$(hostname)\" -t mooring/probe -n -q 0']}}
          initialDelaySeconds: 60
          periodSeconds: 10
          timeoutSeconds: 5
          failureThreshold: 6
        volumeMounts:
        - {{name: config, mountPath: /etc/rabbitmq/mooring}}
        - {{name: secret, mountPath: /etc/rabbitmq/mooring-secrets}}
        - {{name: data, mountPath: /var/lib/rabbitmq/mnesia}}
      volumes:
      - name: config
        configMap: {{name: rmq-config}}
      - name: secret
        secret: {{secretName: rmq-cookie, defaultMode: 256}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"
        ),
    ]
}

async fn all_ready(pods: &Api<Pod>) -> Option<Vec<Pod>> {
    let mut out = Vec::new();
    for i in 0..3 {
        let p = get(pods, &format!("rmq-{i}")).await?;
        if !is_ready(&p) {
            return None;
        }
        out.push(p);
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_statefulset_forms_one_cluster_that_survives_kills_and_deletions() {
    assert!(
        Path::new(RABBITMQ_SERVER).exists(),
        "{RABBITMQ_SERVER} is missing: apt-get install -y rabbitmq-server mosquitto-clients"
    );
    let dc = Devcluster::up("pods-rabbitmq");
    let client = dc.client().await;
    create_namespace(&client, RABBITMQ_NS).await;
    let [svc, cm, secret, sts] = rabbitmq_manifests();
    create::<Service>(&client, RABBITMQ_NS, &svc).await;
    create::<ConfigMap>(&client, RABBITMQ_NS, &cm).await;
    create::<Secret>(&client, RABBITMQ_NS, &secret).await;
    create::<StatefulSet>(&client, RABBITMQ_NS, &sts).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), RABBITMQ_NS);

    // 1. Three brokers Ready: scheduled (claims bound by the agent), started, probed.
    let ready = wait_for("3 RabbitMQ pods Ready", Duration::from_secs(240), || {
        all_ready(&pods)
    })
    .await;
    dc.elapsed("3 RabbitMQ pods Ready");
    let ips: Vec<String> = ready.iter().map(pod_ip).collect();
    eprintln!("pod IPs: {ips:?}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), RABBITMQ_NS);
    for i in 0..3 {
        let c = claims
            .get(&format!("data-rmq-{i}"))
            .await
            .expect("the claim");
        assert_eq!(
            c.status.and_then(|s| s.phase).as_deref(),
            Some("Bound"),
            "claim data-rmq-{i}"
        );
    }
    assert!(dc
        .pod_log(&ready[0], "rabbitmq")
        .contains("Server startup complete"));

    // 2. ONE cluster: a message published on node 1 reaches a subscriber on node 3.
    assert!(
        mqtt_crosses(&ips[2], &ips[0], "first").await,
        "a message published on rmq-0 did not reach a subscriber on rmq-2\n{}",
        cluster_views(&ready)
    );
    dc.elapsed("published on rmq-0, received on rmq-2");

    // 3. kill -9 the broker of rmq-1: the container restarts and the node is back.
    let victim = &ready[1];
    let netns = dc.netns(victim);
    let pids = Command::new("ip")
        .args(["netns", "pids", &netns])
        .output()
        .expect("ip netns pids");
    let beam: Vec<u32> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p: &u32| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "beam.smp")
        })
        .collect();
    assert_eq!(beam.len(), 1, "one beam.smp in {netns}: {beam:?}");
    // SAFETY: kill(2) on the broker process found above.
    assert_eq!(unsafe { libc::kill(beam[0] as i32, libc::SIGKILL) }, 0);
    dc.elapsed("killed the broker of rmq-1");
    let restarted = wait_for(
        "rmq-1 restarted and Ready",
        Duration::from_secs(120),
        || async {
            let p = get(&pods, "rmq-1").await?;
            (restart_count(&p) == 1 && is_ready(&p)).then_some(p)
        },
    )
    .await;
    dc.elapsed("rmq-1 restarted (restartCount 1) and Ready");
    let cs = &restarted
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(
        cs.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "lastState shows the killed run: {cs:?}"
    );
    assert_eq!(restarted.metadata.uid, victim.metadata.uid, "the same Pod");
    assert!(
        mqtt_crosses(&ips[0], &ips[1], "after-kill").await,
        "after its restart, a message published on rmq-1 did not reach rmq-0"
    );
    dc.elapsed("published on restarted rmq-1, received on rmq-0");

    // 4. Delete rmq-0: it comes back with its name, DNS name and data.
    let first = get(&pods, "rmq-0").await.expect("rmq-0");
    in_container(
        &first,
        "echo kept-across-deletion > /var/lib/rabbitmq/mnesia/devcluster-marker",
    );
    let claim_dir = dc
        .dir
        .join("volumes/pvc")
        .join(RABBITMQ_NS)
        .join("data-rmq-0");
    assert_eq!(
        fs::read_to_string(claim_dir.join("devcluster-marker"))
            .expect("the marker in the claim dir"),
        "kept-across-deletion\n"
    );
    pods.delete("rmq-0", &DeleteParams::default())
        .await
        .expect("delete rmq-0");
    dc.elapsed("deleted rmq-0");
    let again = wait_for("a new rmq-0 Ready", Duration::from_secs(120), || async {
        let p = get(&pods, "rmq-0").await?;
        (p.metadata.uid != first.metadata.uid && is_ready(&p)).then_some(p)
    })
    .await;
    dc.elapsed("rmq-0 recreated and Ready");
    assert_eq!(
        in_container(&again, "cat /var/lib/rabbitmq/mnesia/devcluster-marker"),
        "kept-across-deletion\n"
    );
    let fqdn = format!("rmq-0.rmq-headless.{RABBITMQ_NS}.svc.cluster.local");
    let other = get(&pods, "rmq-2").await.expect("rmq-2");
    let resolved = Command::new("ip")
        .args(["netns", "exec", &dc.netns(&other), "getent", "hosts", &fqdn])
        .output()
        .expect("getent");
    let resolved = String::from_utf8_lossy(&resolved.stdout).into_owned();
    assert_eq!(
        resolved.split_whitespace().next(),
        Some(pod_ip(&again).as_str()),
        "{fqdn} in rmq-2's namespace: {resolved:?}"
    );
    // Names that are not in the hosts file fail at once instead of reaching the host's resolver.
    let t = Instant::now();
    let unknown = Command::new("ip")
        .args([
            "netns",
            "exec",
            &dc.netns(&other),
            "getent",
            "hosts",
            "nothing.example.com",
        ])
        .output()
        .expect("getent");
    assert!(!unknown.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "unknown names resolve fast"
    );
    assert!(
        mqtt_crosses(&ips[2], &pod_ip(&again), "after-delete").await,
        "a message published on the new rmq-0 did not reach rmq-2"
    );
    dc.elapsed("published on the new rmq-0, received on rmq-2");
}

const SHELL_NS: &str = "kubelet";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_pods_get_the_kubelets_env_volumes_probes_restarts_and_termination() {
    let dc = Devcluster::up("pods-kubelet");
    let client = dc.client().await;
    create_namespace(&client, SHELL_NS).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHELL_NS);
    let hostpath = dc.dir.join("hostpath");
    create::<ConfigMap>(
        &client,
        SHELL_NS,
        "{metadata: {name: settings}, data: {mode: fast, greeting: hello}}",
    )
    .await;
    create::<Secret>(
        &client,
        SHELL_NS,
        "{metadata: {name: creds}, stringData: {password: s3cret, .erlang.cookie: COOKIE}}",
    )
    .await;
    let sc: StorageClass = parse(
        "{metadata: {name: local-wffc}, provisioner: kubernetes.io/no-provisioner, volumeBindingMode: WaitForFirstConsumer}",
    );
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
        .expect("create the storage class");
    create::<PersistentVolumeClaim>(
        &client,
        SHELL_NS,
        "{metadata: {name: wffc}, spec: {storageClassName: local-wffc, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}",
    )
    .await;

    // Env (valueFrom, $(VAR) with $$ escapes), command/args expansion, volumes and modes, a
    // claim of a WaitForFirstConsumer class, restartPolicy Never -> Succeeded.
    create::<Pod>(
        &client,
        SHELL_NS,
        r#"
metadata: {name: env-and-volumes, labels: {app: shell, tier: test}}
spec:
  restartPolicy: Never
  hostname: box
  subdomain: shells
  initContainers:
  - name: init
    image: busybox
    command: [sh, -c, 'echo from-init > /scratch/init']
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  containers:
  - name: main
    image: debian:12
    command: [sh, -c]
    args:
    - |
      echo "name=$POD_NAME ns=$NS ip=$POD_IP"
      echo "nodename=$NODE_NAME expanded=$EXPANDED escaped=$ESCAPED"
      echo "secret=$PASSWORD mode=$MODE"
      echo "arg=$(POD_NAME)"
      echo "hostname=$(hostname)"
      echo "cookie=$(stat -c %a /secrets/.erlang.cookie)"
      echo "renamed=$(cat /config/sub/renamed) $(stat -c %a /config/sub/renamed)"
      echo "file=$(cat /etc/greeting.txt)"
      echo "labels=$(tr '\n' ',' < /podinfo/labels)"
      echo "podname=$(cat /podinfo/name)"
      echo scratch > /scratch/file && echo "scratch=$(cat /scratch/file)"
      echo "init=$(cat /scratch/init)"
      echo claimed > /claim/file && echo "claim=ok"
      echo "marker=$MOORING_DEVCLUSTER path=$PATH"
      echo "pwd=$(pwd)"
    workingDir: /tmp/work
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    - {name: EXPANDED, value: "$(POD_NAME)-$(NS)"}
    - {name: ESCAPED, value: "$$(POD_NAME)"}
    volumeMounts:
    - {name: secrets, mountPath: /secrets}
    - {name: config, mountPath: /config}
    - {name: config, mountPath: /etc/greeting.txt, subPath: greeting}
    - {name: podinfo, mountPath: /podinfo}
    - {name: scratch, mountPath: /scratch}
    - {name: claim, mountPath: /claim}
  volumes:
  - {name: secrets, secret: {secretName: creds, defaultMode: 256}}
  - name: config
    configMap:
      name: settings
      items:
      - {key: mode, path: sub/renamed, mode: 384}
      - {key: greeting, path: greeting}
  - name: podinfo
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
  - {name: scratch, emptyDir: {}}
  - {name: claim, persistentVolumeClaim: {claimName: wffc}}
"#,
    )
    .await;

    // Readiness over HTTP: a web server Pod becomes Ready, its Service name resolves.
    create::<Service>(
        &client,
        SHELL_NS,
        "{metadata: {name: web}, spec: {selector: {app: web}, ports: [{port: 8080}]}}",
    )
    .await;
    create::<Pod>(
        &client,
        SHELL_NS,
        r#"
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: main
    image: debian:12
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    workingDir: /tmp
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 1
"#,
    )
    .await;

    // Liveness: the probe fails after 3 s, the container restarts (restartCount, lastState).
    create::<Pod>(
        &client,
        SHELL_NS,
        r#"
metadata: {name: liveness}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: debian:12
    command: [sh, -c, 'touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600']
    livenessProbe:
      exec: {command: [test, -f, /tmp/healthy]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    )
    .await;

    // A crashing container: immediate restart, then CrashLoopBackOff.
    create::<Pod>(
        &client,
        SHELL_NS,
        "{metadata: {name: crasher}, spec: {containers: [{name: main, image: busybox, command: [sh, -c, 'exit 3']}]}}",
    )
    .await;

    // Termination messages: one written to /dev/termination-log (the devices of /dev still
    // work), one from the log's end (FallbackToLogsOnError, a failure).
    let host_had_termination_log = Path::new("/dev/termination-log").exists();
    create::<Pod>(
        &client,
        SHELL_NS,
        r#"
metadata: {name: term-file}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'echo to-the-log; test -c /dev/null && test -d /dev/pts && echo ok > /dev/null; printf "all done: %s" "$(id -u)" > /dev/termination-log']
"#,
    )
    .await;
    create::<Pod>(
        &client,
        SHELL_NS,
        r#"
metadata: {name: term-fallback}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, 'for i in $(seq 1 100); do echo line-$i; done; exit 2']
"#,
    )
    .await;

    // Graceful termination: one Pod handles SIGTERM, one ignores it (SIGKILL after its grace).
    fs::create_dir_all(&hostpath).expect("hostpath dir");
    let term_pod = |name: &str, trap: &str, grace: u32| {
        format!(
            r#"
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: main
    image: debian:12
    command: [sh, -c, '{trap}; echo started > /out/{name}; while true; do sleep 0.2; done']
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes: [{{name: out, hostPath: {{path: {}, type: DirectoryOrCreate}}}}]
"#,
            hostpath.display()
        )
    };
    create::<Pod>(
        &client,
        SHELL_NS,
        &term_pod(
            "polite",
            r#"trap "echo got-TERM > /out/polite-term; exit 0" TERM"#,
            30,
        ),
    )
    .await;
    create::<Pod>(
        &client,
        SHELL_NS,
        &term_pod("stubborn", r#"trap "" TERM"#, 2),
    )
    .await;

    // Unmapped images stay Pending with their reason.
    create::<Pod>(
        &client,
        SHELL_NS,
        "{metadata: {name: emqx}, spec: {containers: [{name: emqx, image: 'emqx/emqx:5.8.9'}]}}",
    )
    .await;
    create::<Pod>(
        &client,
        SHELL_NS,
        "{metadata: {name: nginx}, spec: {containers: [{name: nginx, image: 'nginx:1.27'}]}}",
    )
    .await;

    // --- env and volumes
    let done = wait_for(
        "env-and-volumes Succeeded",
        Duration::from_secs(60),
        || async {
            let p = get(&pods, "env-and-volumes").await?;
            let phase = p.status.as_ref()?.phase.clone()?;
            assert_ne!(phase, "Failed", "log: {}", dc.pod_log(&p, "main"));
            (phase == "Succeeded").then_some(p)
        },
    )
    .await;
    dc.elapsed("env-and-volumes Succeeded");
    let log = dc.pod_log(&done, "main");
    let init = &done
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(0),
        "the init container completed: {init:?}"
    );
    // A finished Pod gives its network namespace back.
    let netns = Path::new("/run/netns").join(dc.netns(&done));
    wait_for(
        "the finished pod's netns removed",
        Duration::from_secs(10),
        || async { (!netns.exists()).then_some(()) },
    )
    .await;
    let values: BTreeMap<&str, &str> = log
        .lines()
        .flat_map(|l| l.split(' '))
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let ip = pod_ip(&done);
    let expect = [
        ("name", "env-and-volumes"),
        ("ns", SHELL_NS),
        ("ip", ip.as_str()),
        ("nodename", "devcluster"),
        ("expanded", "env-and-volumes-kubelet"),
        ("escaped", "$(POD_NAME)"),
        ("secret", "s3cret"),
        ("mode", "fast"),
        ("arg", "env-and-volumes"),
        ("hostname", "box"),
        ("cookie", "400"),
        ("file", "hello"),
        ("labels", "app=\"shell\",tier=\"test\","),
        ("podname", "env-and-volumes"),
        ("scratch", "scratch"),
        ("init", "from-init"),
        ("claim", "ok"),
        ("pwd", "/tmp/work"),
    ];
    for (k, v) in expect {
        assert_eq!(values.get(k).copied(), Some(v), "{k} in the log:\n{log}");
    }
    assert!(log.contains("renamed=fast 600"), "{log}");
    assert_eq!(
        values.get("marker").copied(),
        Some(dc.dir.display().to_string().as_str()),
        "the process marker: {log}"
    );
    let claim_file = dc.dir.join("volumes/pvc").join(SHELL_NS).join("wffc/file");
    assert_eq!(
        fs::read_to_string(&claim_file).ok().as_deref(),
        Some("claimed\n")
    );

    // --- readiness over HTTP, Service names
    let web = wait_for("web Ready", Duration::from_secs(60), || async {
        get(&pods, "web").await.filter(is_ready)
    })
    .await;
    dc.elapsed("web Ready (httpGet readiness)");
    let liveness = get(&pods, "liveness").await.expect("liveness pod");
    let seen = Command::new("ip")
        .args([
            "netns",
            "exec",
            &dc.netns(&liveness),
            "getent",
            "hosts",
            "web.kubelet.svc.cluster.local",
        ])
        .output()
        .expect("getent");
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout)
            .split_whitespace()
            .next(),
        Some(pod_ip(&web).as_str()),
        "the Service name resolves to the ready Pod"
    );

    // --- liveness restarts
    let restarted = wait_for("liveness restarted", Duration::from_secs(60), || async {
        get(&pods, "liveness")
            .await
            .filter(|p| restart_count(p) >= 1)
    })
    .await;
    dc.elapsed("liveness failure restarted the container");
    let last = restarted
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .last_state
        .clone()
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert!(
        last.message
            .as_deref()
            .unwrap_or_default()
            .contains("Liveness probe failed"),
        "{last:?}"
    );

    // --- crash loop
    let crashing = wait_for(
        "crasher in CrashLoopBackOff",
        Duration::from_secs(60),
        || async {
            let p = get(&pods, "crasher").await?;
            let cs = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .clone();
            let waiting = cs.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            (waiting == "CrashLoopBackOff").then_some(cs)
        },
    )
    .await;
    dc.elapsed("crasher in CrashLoopBackOff");
    assert!(crashing.restart_count >= 1);
    assert_eq!(
        crashing
            .last_state
            .and_then(|s| s.terminated)
            .map(|t| t.exit_code),
        Some(3)
    );

    // --- termination messages, terminal phases of restartPolicy Never
    let terminated = |name: &'static str, phase: &'static str| {
        let pods = pods.clone();
        let dc = &dc;
        async move {
            let p = wait_for(
                &format!("{name} {phase}"),
                Duration::from_secs(60),
                || async {
                    let p = get(&pods, name).await?;
                    let now = p.status.as_ref()?.phase.clone()?;
                    assert!(
                        now != "Succeeded" && now != "Failed" || now == phase,
                        "{name} is {now}: {}",
                        dc.pod_log(&p, "main")
                    );
                    (now == phase).then_some(p)
                },
            )
            .await;
            p.status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.state)
                .and_then(|s| s.terminated)
                .expect("state.terminated")
        }
    };
    let file = terminated("term-file", "Succeeded").await;
    assert_eq!(file.exit_code, 0, "{file:?}");
    assert_eq!(file.reason.as_deref(), Some("Completed"));
    assert_eq!(file.message.as_deref(), Some("all done: 0"), "{file:?}");
    let fallback = terminated("term-fallback", "Failed").await;
    assert_eq!(fallback.exit_code, 2, "{fallback:?}");
    assert_eq!(fallback.reason.as_deref(), Some("Error"));
    let tail = fallback.message.unwrap_or_default();
    assert_eq!(tail.lines().count(), 80, "{tail}");
    assert!(
        tail.starts_with("line-21\n") && tail.ends_with("line-100\n"),
        "{tail}"
    );
    if !host_had_termination_log {
        assert!(
            !Path::new("/dev/termination-log").exists(),
            "the host's /dev is left alone"
        );
    }
    dc.elapsed("termination messages");

    // --- unmapped images
    for (name, text) in [
        (
            "emqx",
            "EMQX cannot run on this machine: no EMQX package exists for it",
        ),
        ("nginx", "images.yaml"),
    ] {
        let p = get(&pods, name).await.expect("pod");
        let status = p.status.clone().expect("a status");
        assert_eq!(status.phase.as_deref(), Some("Pending"), "{name}");
        let waiting = status.container_statuses.expect("statuses")[0]
            .state
            .clone()
            .and_then(|s| s.waiting)
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("ImageNotMapped"), "{name}");
        assert!(
            waiting
                .message
                .as_deref()
                .unwrap_or_default()
                .contains(text),
            "{name}: {waiting:?}"
        );
        let scheduled = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .map(|c| c.status);
        assert_eq!(scheduled.as_deref(), Some("True"), "{name}");
    }

    // --- graceful termination
    for name in ["polite", "stubborn"] {
        wait_for(
            &format!("{name} started"),
            Duration::from_secs(30),
            || async { hostpath.join(name).exists().then_some(()) },
        )
        .await;
    }
    let t = Instant::now();
    pods.delete("polite", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("polite gone", Duration::from_secs(30), || async {
        get(&pods, "polite").await.is_none().then_some(())
    })
    .await;
    let polite = t.elapsed();
    assert_eq!(
        fs::read_to_string(hostpath.join("polite-term"))
            .ok()
            .as_deref(),
        Some("got-TERM\n")
    );
    assert!(
        polite < Duration::from_secs(10),
        "SIGTERM ended it: {polite:?}"
    );
    let t = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("stubborn gone", Duration::from_secs(30), || async {
        get(&pods, "stubborn").await.is_none().then_some(())
    })
    .await;
    let stubborn = t.elapsed();
    assert!(
        stubborn >= Duration::from_millis(1900) && stubborn < Duration::from_secs(10),
        "SIGKILL after the 2 s grace period: {stubborn:?}"
    );
    dc.elapsed(&format!(
        "graceful termination: SIGTERM handled in {polite:?}, SIGKILL after {stubborn:?}"
    ));
}
