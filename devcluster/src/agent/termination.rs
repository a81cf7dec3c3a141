//! Termination messages, as the kubelet makes them.
//!
//! Each container run gets an empty file of its own, `<pod dir>/termination/<container>`, that
//! the init script bind-mounts at the container's `terminationMessagePath` (default
//! `/dev/termination-log`; `/dev` inside a container is a private overlay of the host's, see
//! [`super::process::init_script`], so nothing is ever created in the host's `/dev`). When the
//! container has exited, [`message`] picks `state.terminated.message`:
//!
//! - the file's last 4096 bytes ([`MAX_MESSAGE`]) when it is not empty;
//! - with `terminationMessagePolicy: FallbackToLogsOnError`, an empty file and a non-zero exit
//!   code: the last 80 lines ([`FALLBACK_LINES`]) of this run's output, at most their last 2048
//!   bytes ([`FALLBACK_BYTES`]);
//! - else nothing.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use k8s_openapi::api::core::v1::Container;

/// The API server's default `terminationMessagePath`.
pub const DEFAULT_PATH: &str = "/dev/termination-log";
/// The most of the file the kubelet reads (`MaxContainerTerminationMessageLength`).
pub const MAX_MESSAGE: usize = 4096;
/// The most log lines of the fallback (`MaxContainerTerminationMessageLogLines`).
pub const FALLBACK_LINES: usize = 80;
/// The most log bytes of the fallback (`MaxContainerTerminationMessageLogLength`).
pub const FALLBACK_BYTES: usize = 2048;

/// The container's `terminationMessagePath` (the default when unset; `None` when set empty).
pub fn path_of(container: &Container) -> Option<String> {
    match container.termination_message_path.as_deref() {
        None => Some(DEFAULT_PATH.to_string()),
        Some("") => None,
        Some(p) => Some(p.to_string()),
    }
}

/// Whether the container falls back to its log (`FallbackToLogsOnError`).
pub fn falls_back_to_logs(container: &Container) -> bool {
    container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
}

/// The last `n` bytes of `bytes`.
fn last_bytes(bytes: &[u8], n: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(n)..]
}

/// The last `lines` lines of `log` (a trailing newline does not start a line), at most the last
/// `max_bytes` of them.
pub fn log_tail(log: &[u8], lines: usize, max_bytes: usize) -> &[u8] {
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines.saturating_sub(1))
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    last_bytes(&log[start..], max_bytes)
}

/// The termination message of a run that ended with `exit_code` (pure): `file` is the content of
/// its termination message file (`None` when it could not be read), `log` the end of this run's
/// output (at least its last [`FALLBACK_BYTES`]).
pub fn message(
    fallback_to_logs: bool,
    file: Option<&[u8]>,
    exit_code: i32,
    log: &[u8],
) -> Option<String> {
    let file = file.map(|f| last_bytes(f, MAX_MESSAGE)).unwrap_or_default();
    let chosen = if !file.is_empty() {
        file
    } else if fallback_to_logs && exit_code != 0 {
        log_tail(log, FALLBACK_LINES, FALLBACK_BYTES)
    } else {
        &[]
    };
    (!chosen.is_empty()).then(|| String::from_utf8_lossy(chosen).into_owned())
}

/// Reads at most the last `max` bytes of `path` from `from` on.
pub fn read_tail(path: &Path, from: u64, max: usize) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = from.max(len.saturating_sub(max as u64)).min(len);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut out = Vec::new();
    f.take(max as u64).read_to_end(&mut out).ok()?;
    Some(out)
}

/// The size of `path` (0 when it does not exist): where the next run's output starts.
pub fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_and_is_cut_to_its_last_4096_bytes() {
        assert_eq!(
            message(true, Some(b"done\n"), 1, b"log\n").as_deref(),
            Some("done\n")
        );
        let long: Vec<u8> = (0..5000).map(|i| b'a' + (i % 26) as u8).collect();
        let m = message(false, Some(&long), 0, b"").unwrap();
        assert_eq!(m.len(), MAX_MESSAGE);
        assert_eq!(m.as_bytes(), &long[long.len() - MAX_MESSAGE..]);
    }

    #[test]
    fn the_log_is_used_only_with_the_policy_an_empty_file_and_a_failure() {
        let log = b"starting\nboom\n";
        assert_eq!(
            message(true, Some(b""), 2, log).as_deref(),
            Some("starting\nboom\n")
        );
        assert_eq!(
            message(true, None, 2, log).as_deref(),
            Some("starting\nboom\n")
        );
        assert_eq!(message(true, Some(b""), 0, log), None);
        assert_eq!(message(false, Some(b""), 2, log), None);
        assert_eq!(message(true, Some(b""), 2, b""), None);
    }

    #[test]
    fn the_fallback_is_the_last_80_lines_and_at_most_2048_bytes() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let m = message(true, None, 1, log.as_bytes()).unwrap();
        assert_eq!(m.lines().count(), 80);
        assert!(
            m.starts_with("line 20\n") && m.ends_with("line 99\n"),
            "{m}"
        );
        let wide: String = (0..10)
            .map(|i| format!("{i}{}\n", "x".repeat(499)))
            .collect();
        let m = message(true, None, 1, wide.as_bytes()).unwrap();
        assert_eq!(m.len(), FALLBACK_BYTES);
        assert_eq!(
            m.as_bytes(),
            &wide.as_bytes()[wide.len() - FALLBACK_BYTES..]
        );
        assert_eq!(log_tail(b"a\nb", 1, 100), b"b");
        assert_eq!(log_tail(b"a\nb\n", 1, 100), b"b\n");
        assert_eq!(log_tail(b"a\nb\n", 5, 100), b"a\nb\n");
    }

    #[test]
    fn paths_and_policies_default_like_the_api_server() {
        let mut c = Container::default();
        assert_eq!(path_of(&c).as_deref(), Some(DEFAULT_PATH));
        assert!(!falls_back_to_logs(&c));
        c.termination_message_path = Some("/tmp/msg".into());
        c.termination_message_policy = Some("FallbackToLogsOnError".into());
        assert_eq!(path_of(&c).as_deref(), Some("/tmp/msg"));
        assert!(falls_back_to_logs(&c));
        c.termination_message_path = Some(String::new());
        assert_eq!(path_of(&c), None);
    }

    #[test]
    fn tails_start_at_this_runs_output() {
        let dir = std::env::temp_dir().join(format!("devcluster-term-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.log");
        std::fs::write(&p, b"old run\nnew run\n").unwrap();
        assert_eq!(read_tail(&p, 8, 4096).unwrap(), b"new run\n");
        assert_eq!(read_tail(&p, 0, 4).unwrap(), b"run\n");
        assert_eq!(read_tail(&p, 100, 4096).unwrap(), b"");
        assert_eq!(size_of(&p), 16);
        assert_eq!(read_tail(&dir.join("none"), 0, 10), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
