//! `devcluster up`/`down` for real: ten cycles leave no network namespace, interface, mount or
//! process behind; `down` works on a state directory that never saw `up`; `up` is idempotent,
//! refuses a bridge another devcluster uses, repairs a half-dead devcluster, and removes what it
//! started when interrupted.
//!
//! Needs root (bridges, network namespaces, mounts) and the control-plane binaries
//! (`MOORING_K8S_BINS`, or the cache that `scripts/build-control-plane.sh` fills). Every test uses
//! its own state directory and free ports; the bridge, name prefixes and pod network are this
//! process's (`support::Net`, tag `updown`), so a developer's devcluster is not disturbed; the
//! tests of this file share them and run one at a time.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::Api;

mod support;
use support::Devcluster;

/// One test at a time: they share the bridge and prefixes.
static SERIAL: Mutex<()> = Mutex::new(());

/// What `up_down` checks in a devcluster of its own.
impl Devcluster {
    fn pids(&self) -> Vec<(String, String)> {
        let mut pids: Vec<(String, String)> = fs::read_dir(self.dir.join("run"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        pids.sort();
        pids
    }

    /// Everything of this devcluster still in the host; empty when it is all gone.
    fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for name in dir_names("/run/netns") {
            if name.starts_with(&self.net.netns_prefix) {
                found.push(format!("netns {name}"));
            }
        }
        for name in dir_names("/sys/class/net") {
            if name.starts_with(&self.net.veth_prefix) || name == self.net.bridge {
                found.push(format!("interface {name}"));
            }
        }
        for name in dir_names("/etc/netns") {
            if name.starts_with(&self.net.netns_prefix) {
                found.push(format!("/etc/netns/{name}"));
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            if let Some(point) = line.split(' ').nth(4) {
                if Path::new(point).starts_with(&self.dir) {
                    found.push(format!("mount {point}"));
                }
            }
        }
        let marker = format!("MOORING_DEVCLUSTER={}", self.dir.display());
        for pid in dir_names("/proc") {
            if pid.parse::<u32>().is_err() {
                continue;
            }
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|e| e == marker.as_bytes()) {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rfind(')')
                    .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
                if !zombie {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    found.push(format!(
                        "process {pid}: {}",
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    ));
                }
            }
        }
        found
    }

    fn assert_clean(&self, when: &str) {
        let left = self.leftovers();
        assert!(left.is_empty(), "{when}: left behind: {left:#?}");
    }
}

fn dir_names(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Creates a Pod with image `busybox` (the agent runs it if it can, or reports why not) and waits
/// up to `wait` for it to leave Pending.
fn create_busybox_pod(kubeconfig: &Path, name: &str, wait: Duration) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = mooring_devcluster::kube_client(kubeconfig)
            .await
            .expect("client");
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("busybox".into()),
                    command: Some(vec!["sleep".into(), "3600".into()]),
                    ..Default::default()
                }],
                termination_grace_period_seconds: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create the pod");
        let deadline = Instant::now() + wait;
        loop {
            let phase = pods
                .get(name)
                .await
                .ok()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                .unwrap_or_else(|| "Pending".to_string());
            if phase != "Pending" || Instant::now() >= deadline {
                return phase;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[test]
fn down_on_a_state_dir_that_never_saw_up_succeeds() {
    let _serial = serial();
    let cluster = Devcluster::new("updown", "never-up");
    fs::remove_dir_all(&cluster.dir).expect("remove the state directory");
    let out = cluster.ok(&["down"]);
    assert!(out.contains("nothing was running"), "{out}");
    let out = cluster.ok(&["down"]);
    assert!(out.contains("nothing was running"), "{out}");
    cluster.assert_clean("after down on a fresh directory");
    let status = cluster.run(&["status"]);
    assert_eq!(status.status.code(), Some(3), "status of nothing");
}

#[test]
fn up_is_idempotent_and_repairs_a_half_dead_cluster() {
    let _serial = serial();
    let cluster = Devcluster::new("updown", "idempotent");
    let out = cluster.ok(&["up"]);
    assert!(
        out.contains(&format!(
            "export KUBECONFIG={}",
            cluster.kubeconfig().display()
        )),
        "{out}"
    );
    let pids = cluster.pids();
    assert_eq!(pids.len(), 5, "{pids:?}");

    let begin = Instant::now();
    let out = cluster.ok(&["up"]);
    assert!(out.contains("already up"), "{out}");
    assert_eq!(
        cluster.pids(),
        pids,
        "a second up must not restart anything"
    );
    eprintln!("second up took {:?}", begin.elapsed());
    assert!(cluster.run(&["status"]).status.success());
    let path = cluster.ok(&["kubeconfig"]);
    assert_eq!(path.trim(), cluster.kubeconfig().display().to_string());

    // A second devcluster with the same bridge name is refused, and its `down` leaves the first
    // one alone.
    let second = Devcluster::new("updown", "second");
    let out = second.run(&["up"]);
    assert!(
        !out.status.success(),
        "a second up on the same bridge must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists already"),
        "{out:?}"
    );
    second.ok(&["down"]);
    drop(second);
    assert!(
        cluster.run(&["status"]).status.success(),
        "the first devcluster must be intact"
    );

    // The API server dies: the next `up` removes the rest and starts afresh.
    let api_pid: i32 = fs::read_to_string(cluster.dir.join("run/kube-apiserver.pid"))
        .expect("apiserver pidfile")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) on a pid this test's cluster started.
    unsafe {
        libc::kill(api_pid, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.run(&["status"]).status.code(), Some(3));
    let out = cluster.ok(&["up"]);
    assert!(out.contains("incomplete"), "{out}");
    assert_ne!(cluster.pids(), pids);
    assert!(cluster.run(&["status"]).status.success());

    let out = cluster.ok(&["down"]);
    assert!(out.contains("stopped agent"), "{out}");
    cluster.assert_clean("after down");
    let out = cluster.ok(&["down"]);
    assert!(out.contains("nothing was running"), "{out}");
    assert!(!cluster.kubeconfig().exists());
    assert!(cluster.dir.join("logs/kube-apiserver.log").is_file());
}

#[test]
fn an_interrupted_up_removes_what_it_started() {
    let _serial = serial();
    let cluster = Devcluster::new("updown", "interrupted");
    let mut child = cluster
        .command(&["up"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start up");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read up's output");
        eprintln!("up: {line}");
        let interrupt = line.contains("started kube-apiserver");
        seen.push(line);
        if interrupt {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
        }
    }
    let status = child.wait().expect("wait for up");
    assert!(!status.success(), "an interrupted up must fail: {seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("interrupted by Ctrl-C")),
        "{seen:#?}"
    );
    cluster.assert_clean("after an interrupted up");
}

#[test]
fn ten_up_down_cycles_leave_nothing_behind() {
    let _serial = serial();
    let cluster = Devcluster::new("updown", "cycles");
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for cycle in 0..10 {
        let begin = Instant::now();
        cluster.ok(&["up"]);
        ups.push(begin.elapsed());
        let phase = create_busybox_pod(
            &cluster.kubeconfig(),
            &format!("busybox-{cycle}"),
            Duration::from_secs(5),
        );
        eprintln!("cycle {cycle}: pod busybox-{cycle} is {phase}");
        let begin = Instant::now();
        cluster.ok(&["down"]);
        downs.push(begin.elapsed());
        cluster.assert_clean(&format!("after down #{}", cycle + 1));
    }
    let secs = |d: &[Duration]| {
        d.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!("up took (s): {}", secs(&ups));
    eprintln!("down took (s): {}", secs(&downs));
}
