//! The membership commands: `sh` quoting, node-name checks, the join, forget and quarantine
//! scripts and argv (`rabbitmqctl -q -l -n <node>`), and what a command's outcome means.

use crate::drivers::DriverError;
use crate::pod_command::CommandOutput;

/// The directory (in the data directory) that quarantined node data is moved into.
pub const QUARANTINE_DIR: &str = "mooring-quarantine";
/// The CLI.
const CTL: &str = "rabbitmqctl";

/// `text` quoted for `sh`: in single quotes, with `'` written as `'\''`.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Refuses node names that cannot be RabbitMQ node names (empty, no `@`, white space, control
/// characters, `/` or glob characters): they are never put into a command.
pub(super) fn valid_node(op: &'static str, node: &str) -> Result<(), DriverError> {
    let ok = !node.is_empty()
        && node.contains('@')
        && !node
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '*' | '?' | '['));
    if ok {
        Ok(())
    } else {
        Err(DriverError::Command {
            op,
            target: node.to_string(),
            message: format!("{node:?} is not a RabbitMQ node name"),
        })
    }
}

/// The `sh` script that joins `stray` to `seed`'s cluster: `stop_app`, then (when it stopped)
/// `join_cluster`, then ALWAYS `start_app`. Exits with the first failure of `stop_app` or
/// `join_cluster`, else with `start_app`'s exit code; prints one line per step.
pub fn join_script(stray: &str, seed: &str) -> String {
    let ctl = format!("{CTL} -q -l -n {}", sh_quote(stray));
    let seed = sh_quote(seed);
    format!(
        "{ctl} stop_app; rc=$?\n\
         echo \"mooring: stop_app exited $rc\"\n\
         if [ \"$rc\" -eq 0 ]; then\n  \
           {ctl} join_cluster {seed}; rc=$?\n  \
           echo \"mooring: join_cluster exited $rc\"\n\
         fi\n\
         {ctl} start_app; started=$?\n\
         echo \"mooring: start_app exited $started\"\n\
         if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi\n\
         exit \"$started\"\n"
    )
}

/// `sh -c` [`join_script`].
pub fn join_argv(stray: &str, seed: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), join_script(stray, seed)]
}

/// Partition-handling modes that can be switched at runtime (a plain atom).
pub const RUNTIME_PARTITION_MODES: [&str; 3] = ["ignore", "autoheal", "pause_minority"];

/// The `sh` script that switches `cluster_partition_handling` to `mode` on every node of `nodes`
/// at runtime (`application:set_env`; RabbitMQ reads it when a partition or node loss happens),
/// so that a cluster shrinking below 3 nodes does not pause itself during the rolling restart
/// that follows. Tries every node; exits non-zero when one failed.
pub fn partition_handling_script(nodes: &[String], mode: &str) -> String {
    let mut out = String::from("failed=0\n");
    for node in nodes {
        let ctl = format!("{CTL} -q -l -n {}", sh_quote(node));
        out.push_str(&format!(
            "{ctl} eval {} || failed=1\n",
            sh_quote(&format!(
                "application:set_env(rabbit, cluster_partition_handling, {mode})."
            ))
        ));
    }
    out.push_str("exit \"$failed\"\n");
    out
}

/// The `sh` script that makes `node` leave its cluster for good (a scale-down): `stop_app`, then
/// `reset` (which tells the other members to forget it and wipes its own data, so that a later
/// scale-up starts blank and joins). When `reset` fails the application is started again, so that
/// a failed leave does not leave a stopped member behind. Exits with the first failure.
pub fn leave_script(node: &str) -> String {
    let ctl = format!("{CTL} -q -l -n {}", sh_quote(node));
    format!(
        "{ctl} stop_app; rc=$?\n\
         echo \"mooring: stop_app exited $rc\"\n\
         if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi\n\
         {ctl} reset; rc=$?\n\
         echo \"mooring: reset exited $rc\"\n\
         if [ \"$rc\" -ne 0 ]; then\n  \
           {ctl} start_app; echo \"mooring: start_app exited $?\"\n\
         fi\n\
         exit \"$rc\"\n"
    )
}

/// `rabbitmqctl -q -l -n <via> forget_cluster_node <ghost>`.
pub fn forget_argv(via: &str, ghost: &str) -> Vec<String> {
    [CTL, "-q", "-l", "-n", via, "forget_cluster_node", ghost]
        .into_iter()
        .map(String::from)
        .collect()
}

/// `rabbitmqctl -q -l -n <node> restart_vhost -p /`: Mooring's clusters use the default vhost.
pub fn restart_vhost_argv(node: &str) -> Vec<String> {
    [CTL, "-q", "-l", "-n", node, "restart_vhost", "-p", "/"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// The `sh` script that restarts the broker application on `node`: `stop_app`, then ALWAYS
/// `start_app`; exits with the first failure.
pub fn restart_app_script(node: &str) -> String {
    let ctl = format!("{CTL} -q -l -n {}", sh_quote(node));
    format!(
        "{ctl} stop_app; rc=$?\n\
         {ctl} start_app; started=$?\n\
         echo \"mooring: stop_app exited $rc, start_app exited $started\"\n\
         if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi\n\
         exit \"$started\"\n"
    )
}

/// How `forget_cluster_node` ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Forget {
    Removed,
    /// The ghost is not (any more) a member: `{:not_a_cluster_node, ...}`.
    NotAMember,
    Failed,
}

pub(super) fn forget_outcome(out: &CommandOutput) -> Forget {
    if out.exit_code == 0 {
        Forget::Removed
    } else if out.output.contains("not_a_cluster_node") {
        Forget::NotAMember
    } else {
        Forget::Failed
    }
}

/// The `sh` script that moves the data of `node` aside: every entry of `data_dir` named
/// `<node>` or `<node>-*` goes into `<data_dir>/mooring-quarantine/<UTC timestamp>/`; then the
/// older quarantines are removed (only the newest is kept). Prints what it moved; a no-op
/// success when nothing matches; fails when `data_dir` does not exist.
pub fn quarantine_script(data_dir: &str, node: &str) -> String {
    format!(
        r#"dir={dir}
node={node}
if [ ! -d "$dir" ]; then echo "mooring: no data directory $dir"; exit 1; fi
cd "$dir" || exit 1
q="{quarantine}/$(date -u +%Y%m%dT%H%M%SZ)"
n=1; base="$q"
while [ -e "$q" ]; do q="$base-$n"; n=$((n + 1)); done
moved=0
for f in "$node" "$node"-*; do
  if [ ! -e "$f" ] && [ ! -L "$f" ]; then continue; fi
  if [ "$moved" -eq 0 ]; then mkdir -p "$q" || exit 1; fi
  mv -- "$f" "$q/" || exit 1
  echo "mooring: moved $dir/$f to $dir/$q/"
  moved=$((moved + 1))
done
if [ "$moved" -eq 0 ]; then echo "mooring: nothing of $node in $dir"; exit 0; fi
for old in {quarantine}/*; do
  if [ "$old" != "$q" ] && [ -d "$old" ]; then
    rm -rf -- "$old" && echo "mooring: removed the older quarantine $dir/$old"
  fi
done
exit 0
"#,
        dir = sh_quote(data_dir),
        node = sh_quote(node),
        quarantine = QUARANTINE_DIR,
    )
}

/// `sh -c` [`quarantine_script`].
pub fn quarantine_argv(data_dir: &str, node: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), quarantine_script(data_dir, node)]
}

/// A command that ran and failed.
pub(super) fn command_failed(op: &'static str, target: &str, out: &CommandOutput) -> DriverError {
    let output = out.output.trim();
    let mut message = format!("exit code {}", out.exit_code);
    if !output.is_empty() {
        message.push_str(": ");
        if out.truncated {
            message.push_str("...");
        }
        message.push_str(output);
    }
    DriverError::Command {
        op,
        target: target.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_config::rabbitmq::DATA_DIR;

    #[test]
    fn sh_quoting() {
        assert_eq!(sh_quote("rabbit@a.b"), "'rabbit@a.b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn node_names_are_checked_before_any_command() {
        for ok in [
            "rabbit@bus-0.bus-headless.iot.svc.cluster.local",
            "r@127.0.0.1",
        ] {
            assert!(valid_node("join", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "rabbit",
            "rabbit@a b",
            "rabbit@a/../b",
            "rabbit@*",
            "r@a\n",
        ] {
            assert!(valid_node("join", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_join_script_always_starts_the_app() {
        let stray = "rabbit@bus-2.bus-headless.iot.svc.cluster.local";
        let seed = "rabbit@bus-0.bus-headless.iot.svc.cluster.local";
        let argv = join_argv(stray, seed);
        assert_eq!(argv[..2], ["sh", "-c"]);
        let script = &argv[2];
        let stop = script
            .find(&format!("rabbitmqctl -q -l -n '{stray}' stop_app"))
            .unwrap();
        let join = script
            .find(&format!(
                "rabbitmqctl -q -l -n '{stray}' join_cluster '{seed}'"
            ))
            .unwrap();
        let start = script
            .find(&format!("rabbitmqctl -q -l -n '{stray}' start_app"))
            .unwrap();
        assert!(stop < join && join < start);
        // start_app is outside the conditional.
        assert!(script[..start].trim_end().ends_with("fi"));
    }

    /// Runs `script` with `sh`, `rabbitmqctl` replaced by a shell function that logs its
    /// arguments and fails for the verbs in `fail`.
    fn run_with_fake_ctl(script: &str, fail: &[&str]) -> (i32, String) {
        let fake = format!(
            "rabbitmqctl() {{ for v in {fails}; do for a in \"$@\"; do if [ \"$a\" = \"$v\" ]; then echo \"ctl $*: failed\"; return 69; fi; done; done; echo \"ctl $*\"; }}\n",
            fails = if fail.is_empty() { "none".to_string() } else { fail.join(" ") },
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{fake}{script}"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn the_join_script_reports_the_first_failure_and_still_starts() {
        let script = join_script("r@a", "r@b");
        let (rc, out) = run_with_fake_ctl(&script, &[]);
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains("ctl -q -l -n r@a join_cluster r@b"));
        let (rc, out) = run_with_fake_ctl(&script, &["join_cluster"]);
        assert_eq!(rc, 69, "{out}");
        assert!(out.contains("ctl -q -l -n r@a start_app"), "{out}");
        let (rc, out) = run_with_fake_ctl(&script, &["stop_app"]);
        assert_eq!(rc, 69);
        assert!(!out.contains("join_cluster"), "{out}");
        assert!(out.contains("start_app"), "{out}");
        let (rc, out) = run_with_fake_ctl(&script, &["start_app"]);
        assert_eq!(rc, 69, "{out}");
    }

    #[test]
    fn the_restart_script_always_starts_the_app_again() {
        let script = restart_app_script("r@a");
        let (rc, out) = run_with_fake_ctl(&script, &[]);
        assert_eq!(rc, 0, "{out}");
        assert!(
            out.contains("ctl -q -l -n r@a stop_app") && out.contains("ctl -q -l -n r@a start_app")
        );
        let (rc, out) = run_with_fake_ctl(&script, &["stop_app"]);
        assert_eq!(rc, 69, "{out}");
        assert!(out.contains("ctl -q -l -n r@a start_app"), "{out}");
        assert_eq!(
            restart_vhost_argv("r@a")[3..],
            ["-n", "r@a", "restart_vhost", "-p", "/"]
        );
    }

    #[test]
    fn partition_handling_is_set_on_every_node() {
        let script = partition_handling_script(&["r@a".into(), "r@b".into()], "autoheal");
        for n in ["r@a", "r@b"] {
            assert!(script.contains(&format!(
                "rabbitmqctl -q -l -n 'r@{}' eval 'application:set_env(rabbit, cluster_partition_handling, autoheal).' || failed=1",
                &n[2..]
            )), "{script}");
        }
        assert!(script.ends_with("exit \"$failed\"\n"));
    }

    #[test]
    fn leave_stops_then_resets_and_restarts_only_after_a_failed_reset() {
        let script = leave_script("rabbit@a'b");
        let ctl = "rabbitmqctl -q -l -n 'rabbit@a'\\''b'";
        let stop = script.find(&format!("{ctl} stop_app")).expect("stop_app");
        let reset = script.find(&format!("{ctl} reset")).expect("reset");
        let start = script.find(&format!("{ctl} start_app")).expect("start_app");
        assert!(stop < reset && reset < start);
        // start_app sits in the failure branch of reset only.
        let branch = &script[reset..start];
        assert!(branch.contains("if [ \"$rc\" -ne 0 ]; then"), "{script}");
        assert!(script.trim_end().ends_with("exit \"$rc\""));
    }

    #[test]
    fn forget_argv_and_outcomes() {
        assert_eq!(
            forget_argv("r@a", "r@b"),
            [
                "rabbitmqctl",
                "-q",
                "-l",
                "-n",
                "r@a",
                "forget_cluster_node",
                "r@b"
            ]
        );
        let out = |exit_code, output: &str| CommandOutput {
            exit_code,
            output: output.into(),
            truncated: false,
        };
        assert_eq!(forget_outcome(&out(0, "")), Forget::Removed);
        assert_eq!(
            forget_outcome(&out(
                69,
                "Error:\n{:not_a_cluster_node, 'The node selected is not in the cluster.'}"
            )),
            Forget::NotAMember
        );
        assert_eq!(
            forget_outcome(&out(69, "Error: unable to perform")),
            Forget::Failed
        );
        let e = command_failed("remove_member", "r@a", &out(69, "  boom\n"));
        assert_eq!(e.to_string(), "remove_member on r@a: exit code 69: boom");
    }

    #[test]
    fn the_quarantine_script_quotes_and_moves() {
        let script = quarantine_script(DATA_DIR, "rabbit@x-2.x-headless.ns.svc.cluster.local");
        assert!(script.contains("dir='/var/lib/rabbitmq/mnesia'"));
        assert!(script.contains("node='rabbit@x-2.x-headless.ns.svc.cluster.local'"));
        assert!(script.contains("mv -- "));
        assert!(!script.contains("rm -rf -- \"$f\""));
        assert_eq!(quarantine_argv("/d", "r@a")[..2], ["sh", "-c"]);
    }

    /// The script itself, on a temporary directory.
    #[test]
    fn the_quarantine_script_moves_only_the_node_and_keeps_the_newest() {
        let dir =
            std::env::temp_dir().join(format!("mooring-quarantine-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = "rabbit@x-2.x-headless.ns.svc.cluster.local";
        for d in [
            node.to_string(),
            format!("{node}-plugins-expand"),
            "rabbit@x-1.x-headless.ns.svc.cluster.local".into(),
        ] {
            std::fs::create_dir_all(dir.join(&d).join("sub")).unwrap();
        }
        std::fs::write(dir.join(format!("{node}-feature_flags")), "[]").unwrap();
        std::fs::write(dir.join(format!("{node}.pid")), "1").unwrap();
        std::fs::create_dir_all(dir.join(QUARANTINE_DIR).join("20000101T000000Z")).unwrap();
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(quarantine_script(dir.to_str().unwrap(), node))
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (rc, out) = run();
        assert_eq!(rc, Some(0), "{out}");
        assert_eq!(out.matches("mooring: moved").count(), 3, "{out}");
        assert!(out.contains("removed the older quarantine"), "{out}");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                QUARANTINE_DIR.to_string(),
                "rabbit@x-1.x-headless.ns.svc.cluster.local".into(),
                format!("{node}.pid"),
            ]
        );
        let kept: Vec<_> = std::fs::read_dir(dir.join(QUARANTINE_DIR))
            .unwrap()
            .collect();
        assert_eq!(kept.len(), 1);
        let kept = kept.into_iter().next().unwrap().unwrap().path();
        assert!(kept.join(node).join("sub").is_dir());
        assert!(kept.join(format!("{node}-feature_flags")).is_file());
        // Nothing left to move: a no-op success that keeps the quarantine.
        let (rc, out) = run();
        assert_eq!(rc, Some(0));
        assert!(out.contains("nothing of"), "{out}");
        assert!(kept.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
        // No data directory: a failure.
        let (rc, out) = run();
        assert_eq!(rc, Some(1), "{out}");
    }
}
