//! A client of HAProxy's runtime API: the worker's admin socket (`stats socket ... level admin`)
//! and the master CLI (`haproxy -W -S <socket>`), over Unix sockets.
//!
//! Every command is one connection: the command and a newline are written, the sending side is
//! shut down, and the answer is read until HAProxy closes the connection (non-interactive mode). Every call is bounded by the
//! client's timeout. Commands are built by pure functions that only accept names made of
//! `[A-Za-z0-9._-]`, so no value can add a second command (`;`) or a line.
//!
//! # What HAProxy 2.6 answers (measured, 2.6.12)
//! - `show servers state <backend>`: a version line `1`, a header line `# be_id be_name srv_id
//!   srv_name srv_addr srv_op_state srv_admin_state ...` and one line per server; an unknown
//!   backend answers `Can't find backend.`. The parser finds columns by the header's names.
//! - `srv_admin_state` is a bit field: `0x01` forced maintenance (`set server ... state maint`),
//!   `0x02` maintenance inherited from a tracked server, `0x04` maintenance from the configuration
//!   (`disabled`), `0x08` forced drain, `0x10` inherited drain, `0x20` address resolution failure.
//!   A server rendered `disabled` shows `5` (forced + configured); after `state ready` it shows `4`
//!   and takes traffic: the configured bit stays set and means nothing once the forced bit is
//!   cleared. So a server's own state ([`ServerStateRow::state`]) is maintenance when `0x01` is
//!   set, drain when `0x08` is set, ready otherwise; inherited bits belong to the tracked server.
//! - `set server <b>/<s> state ready|drain|maint` answers nothing on success; `set server <b>/<s>
//!   addr <ip> port <port>` answers `IP changed from ...` or `no need to change the addr, ...`;
//!   errors are sentences such as `No such server.`, `No such backend.` or `Invalid addr ...`.
//! - Master CLI `reload`: the master re-executes itself and closes the connection without an
//!   answer; for a moment its socket refuses connections. `show proc` then shows the master's
//!   reload counter incremented and `[failed: N]`: `0` after a successful reload, the number of
//!   consecutive failures otherwise (a configuration HAProxy rejects keeps the old worker).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::desired::DesiredServer;

/// Default bound of one runtime API call (connect, write, read).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`MasterApi::reload`] waits for the master to report the reload by default.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read from a socket; a longer one is an error.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Longest backend or server name accepted in a command.
pub const MAX_NAME_LEN: usize = 253;

/// `srv_admin_state` bit: maintenance forced through the runtime API.
pub const ADMIN_FORCED_MAINT: u8 = 0x01;
/// `srv_admin_state` bit: maintenance inherited from the tracked server.
pub const ADMIN_INHERITED_MAINT: u8 = 0x02;
/// `srv_admin_state` bit: maintenance from the configuration (`disabled`).
pub const ADMIN_CONFIG_MAINT: u8 = 0x04;
/// `srv_admin_state` bit: drain forced through the runtime API.
pub const ADMIN_FORCED_DRAIN: u8 = 0x08;
/// `srv_admin_state` bit: drain inherited from the tracked server.
pub const ADMIN_INHERITED_DRAIN: u8 = 0x10;
/// `srv_admin_state` bit: the server's address could not be resolved.
pub const ADMIN_RESOLUTION_MAINT: u8 = 0x20;
/// `srv_op_state` of a server that is up.
pub const OP_STATE_RUNNING: u8 = 2;

/// What the runtime API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A name cannot go into a command.
    #[error(
        "{0:?} cannot be used in a runtime API command (allowed: A-Z a-z 0-9 . _ -, at most 253)"
    )]
    InvalidName(String),
    /// A command contains a newline or `;` (it would be several commands).
    #[error("{0:?} is not a single runtime API command")]
    InvalidCommand(String),
    /// The socket could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The call took longer than the client's timeout.
    #[error("{path}: no complete answer to {command:?} within {timeout:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// The bound.
        timeout: Duration,
    },
    /// The answer is longer than [`MAX_RESPONSE_BYTES`].
    #[error("{path}: the answer to {command:?} exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLong {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
    },
    /// HAProxy answered with an error message.
    #[error("HAProxy refused {command:?}: {answer}")]
    Refused {
        /// The command.
        command: String,
        /// HAProxy's answer (first 200 characters).
        answer: String,
    },
    /// An answer does not have the expected format.
    #[error("cannot parse the answer to {command:?}: {reason}")]
    Parse {
        /// The command.
        command: String,
        /// What is wrong.
        reason: String,
    },
    /// The master reported a failed reload: the previous worker keeps running.
    #[error("HAProxy rejected the reload ({failed} failed in a row): the old configuration stays")]
    ReloadFailed {
        /// Consecutive failed reloads the master reports.
        failed: u32,
    },
    /// The master did not report a reload in time.
    #[error("the master did not report the reload within {timeout:?}: {last}")]
    ReloadTimeout {
        /// The bound.
        timeout: Duration,
        /// The last thing seen (an error or the last `show proc`).
        last: String,
    },
}

/// A server's administrative state, as set with `set server <b>/<s> state <state>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerAdminState {
    /// Takes new and sticky clients (HAProxy's health check still decides whether it is up).
    Ready,
    /// Takes no new clients; clients stuck to it in the stick table still reach it, connected ones
    /// stay. [`converge`] also clears its stick-table entries, so that no client at all is sent
    /// to it any more.
    Drain,
    /// Takes no traffic at all; connected clients stay until they disconnect.
    Maint,
}

impl ServerAdminState {
    /// The word of the `set server` command.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerAdminState::Ready => "ready",
            ServerAdminState::Drain => "drain",
            ServerAdminState::Maint => "maint",
        }
    }
}

impl fmt::Display for ServerAdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStateRow {
    /// `be_name`.
    pub backend: String,
    /// `srv_id`: the server's id, what stick-table entries store as `server_id`.
    pub id: u32,
    /// `srv_name`.
    pub server: String,
    /// `srv_addr`; `None` when HAProxy shows `-` (no address).
    pub addr: Option<IpAddr>,
    /// `srv_port`; `None` when HAProxy shows `-` or `0`.
    pub port: Option<u16>,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`, the `ADMIN_*` bits.
    pub admin_flags: u8,
}

impl ServerStateRow {
    /// The state set on this server itself (inherited bits and the configured bit are ignored, see
    /// the module documentation).
    pub fn state(&self) -> ServerAdminState {
        if self.admin_flags & ADMIN_FORCED_MAINT != 0 {
            ServerAdminState::Maint
        } else if self.admin_flags & ADMIN_FORCED_DRAIN != 0 {
            ServerAdminState::Drain
        } else {
            ServerAdminState::Ready
        }
    }

    /// Whether HAProxy considers the server up (its health check passes).
    pub fn is_running(&self) -> bool {
        self.op_state == OP_STATE_RUNNING
    }
}

/// What the master CLI's `show proc` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    /// The master's PID.
    pub master_pid: u32,
    /// How many times the master reloaded.
    pub reloads: u32,
    /// Consecutive failed reloads (0 after a successful one).
    pub failed_reloads: u32,
    /// PIDs of the current workers.
    pub workers: Vec<u32>,
    /// PIDs of workers left from earlier reloads (still serving their connections).
    pub old_workers: Vec<u32>,
}

/// The outcome of a successful reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// `show proc` after the reload.
    pub after: ProcInfo,
    /// Current workers before the reload.
    pub workers_before: Vec<u32>,
}

/// One runtime change [`plan`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `set server <backend>/<server> addr <addr> port <port>`.
    SetAddr {
        /// Backend.
        backend: String,
        /// Server.
        server: String,
        /// The address HAProxy has.
        from: Option<IpAddr>,
        /// The port HAProxy has.
        from_port: Option<u16>,
        /// The address to set.
        addr: IpAddr,
        /// The port to set.
        port: u16,
    },
    /// `set server <backend>/<server> state <state>`.
    SetState {
        /// Backend.
        backend: String,
        /// Server.
        server: String,
        /// The state HAProxy has.
        from: ServerAdminState,
        /// The state to set.
        to: ServerAdminState,
    },
}

impl Change {
    /// The runtime API command that makes this change.
    pub fn command(&self) -> Result<String, RuntimeError> {
        match self {
            Change::SetAddr {
                backend,
                server,
                addr,
                port,
                ..
            } => cmd_set_addr(backend, server, *addr, *port),
            Change::SetState {
                backend,
                server,
                to,
                ..
            } => cmd_set_state(backend, server, *to),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |a: &Option<IpAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        match self {
            Change::SetAddr {
                backend,
                server,
                from,
                from_port,
                addr,
                port,
            } => write!(
                f,
                "{backend}/{server} address {}:{} -> {addr}:{port}",
                show(from),
                from_port.map_or_else(|| "-".to_string(), |p| p.to_string())
            ),
            Change::SetState {
                backend,
                server,
                from,
                to,
            } => write!(f, "{backend}/{server} state {from} -> {to}"),
        }
    }
}

/// What [`plan`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in the order they must be sent.
    pub changes: Vec<Change>,
    /// Draining servers (`backend`, `server`, id): their stick-table entries are cleared (after
    /// the changes), every round, since peers may teach an entry back.
    pub unstick: Vec<(String, String, u32)>,
    /// Desired servers HAProxy does not have (`backend/server`): only a reload can add them.
    pub missing: Vec<String>,
}

/// What [`converge`] did.
#[derive(Debug, Default)]
pub struct ConvergeReport {
    /// Changes HAProxy accepted.
    pub applied: Vec<Change>,
    /// Desired servers HAProxy does not have (`backend/server`).
    pub missing: Vec<String>,
    /// What failed; the rest was still attempted.
    pub errors: Vec<RuntimeError>,
}

impl ConvergeReport {
    /// Nothing failed and nothing is missing.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.missing.is_empty()
    }
}

fn check_name(name: &str) -> Result<&str, RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(RuntimeError::InvalidName(cut(name, 80)))
    }
}

/// `show servers state <backend>`.
pub fn cmd_show_servers_state(backend: &str) -> Result<String, RuntimeError> {
    Ok(format!("show servers state {}", check_name(backend)?))
}

/// `set server <backend>/<server> addr <addr> port <port>` (IPv6 addresses without brackets).
pub fn cmd_set_addr(
    backend: &str,
    server: &str,
    addr: IpAddr,
    port: u16,
) -> Result<String, RuntimeError> {
    Ok(format!(
        "set server {}/{} addr {addr} port {port}",
        check_name(backend)?,
        check_name(server)?
    ))
}

/// `set server <backend>/<server> state <state>`.
pub fn cmd_set_state(
    backend: &str,
    server: &str,
    state: ServerAdminState,
) -> Result<String, RuntimeError> {
    Ok(format!(
        "set server {}/{} state {state}",
        check_name(backend)?,
        check_name(server)?
    ))
}

/// `clear table <table> data.server_id eq <id>`: forgets every client stuck to that server.
pub fn cmd_clear_sticky(table: &str, server_id: u32) -> Result<String, RuntimeError> {
    Ok(format!(
        "clear table {} data.server_id eq {server_id}",
        check_name(table)?
    ))
}

/// Parses the answer to `show servers state [<backend>]`.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerStateRow>, RuntimeError> {
    let command = "show servers state";
    let parse_err = |reason: String| RuntimeError::Parse {
        command: command.into(),
        reason,
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some("1") => {}
        Some(other) => {
            return Err(RuntimeError::Refused {
                command: command.into(),
                answer: cut(other, 200),
            })
        }
        None => return Err(parse_err("empty answer".into())),
    }
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| parse_err("no header line".into()))?;
    let columns: BTreeMap<&str, usize> = header
        .split_whitespace()
        .enumerate()
        .map(|(i, name)| (name, i))
        .collect();
    let column = |name: &str| {
        columns
            .get(name)
            .copied()
            .ok_or_else(|| parse_err(format!("no column {name}")))
    };
    let (be, id, srv, addr, op, admin, port) = (
        column("be_name")?,
        column("srv_id")?,
        column("srv_name")?,
        column("srv_addr")?,
        column("srv_op_state")?,
        column("srv_admin_state")?,
        column("srv_port")?,
    );
    let width = columns.len();
    lines
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < width {
                return Err(parse_err(format!(
                    "{} fields instead of {width} in {:?}",
                    fields.len(),
                    cut(line, 120)
                )));
            }
            let number = |i: usize, what: &str| {
                fields[i]
                    .parse::<u8>()
                    .map_err(|_| parse_err(format!("{what} {:?} is not a number", fields[i])))
            };
            Ok(ServerStateRow {
                backend: fields[be].to_string(),
                id: fields[id]
                    .parse()
                    .map_err(|_| parse_err(format!("srv_id {:?} is not a number", fields[id])))?,
                server: fields[srv].to_string(),
                addr: fields[addr].parse().ok(),
                port: fields[port].parse().ok().filter(|p| *p != 0),
                op_state: number(op, "srv_op_state")?,
                admin_flags: number(admin, "srv_admin_state")?,
            })
        })
        .collect()
}

/// Parses the master CLI's `show proc`.
pub fn parse_show_proc(text: &str) -> Result<ProcInfo, RuntimeError> {
    let parse_err = |reason: String| RuntimeError::Parse {
        command: "show proc".into(),
        reason,
    };
    #[derive(PartialEq)]
    enum Section {
        Head,
        Workers,
        OldWorkers,
        Other,
    }
    let mut section = Section::Head;
    let mut master = None;
    let mut workers = Vec::new();
    let mut old_workers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(title) = line.strip_prefix('#') {
            section = match title.trim() {
                "workers" => Section::Workers,
                "old workers" => Section::OldWorkers,
                t if t.starts_with('<') => Section::Head,
                _ => Section::Other,
            };
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let pid = |f: &[&str]| f.first().and_then(|p| p.parse::<u32>().ok());
        match (fields.get(1).copied(), &section) {
            (Some("master"), _) => {
                let pid = pid(&fields).ok_or_else(|| parse_err(format!("bad line {line:?}")))?;
                let reloads = fields
                    .get(2)
                    .and_then(|r| r.parse::<u32>().ok())
                    .ok_or_else(|| parse_err(format!("no reload count in {line:?}")))?;
                // `[failed: N]` follows the reload count.
                let failed = line
                    .split_once("[failed:")
                    .and_then(|(_, rest)| rest.split(']').next())
                    .map(|n| n.trim().parse::<u32>())
                    .transpose()
                    .map_err(|_| parse_err(format!("bad failed count in {line:?}")))?
                    .unwrap_or(0);
                master = Some((pid, reloads, failed));
            }
            (Some("worker"), Section::Workers) => workers.extend(pid(&fields)),
            (Some("worker"), Section::OldWorkers) => old_workers.extend(pid(&fields)),
            _ => {}
        }
    }
    let (master_pid, reloads, failed_reloads) = master.ok_or_else(|| {
        if text.trim().is_empty() {
            parse_err("empty answer".into())
        } else {
            parse_err(format!("no master line in {:?}", cut(text.trim(), 200)))
        }
    })?;
    Ok(ProcInfo {
        master_pid,
        reloads,
        failed_reloads,
        workers,
        old_workers,
    })
}

/// The changes that bring `current` (one or more backends' `show servers state`) to `desired`.
///
/// Per server: when it must become ready, the address first and then the state (a server must
/// never take clients at a stale or placeholder address); otherwise the state first and then the
/// address. A desired server without an address keeps whatever address HAProxy has.
pub fn plan(desired: &[DesiredServer], current: &[ServerStateRow]) -> Plan {
    let by_name: BTreeMap<(&str, &str), &ServerStateRow> = current
        .iter()
        .map(|r| ((r.backend.as_str(), r.server.as_str()), r))
        .collect();
    let mut out = Plan::default();
    for d in desired {
        let Some(row) = by_name.get(&(d.backend.as_str(), d.server.as_str())) else {
            out.missing.push(format!("{}/{}", d.backend, d.server));
            continue;
        };
        let addr = d
            .addr
            .filter(|ip| row.addr != Some(*ip) || row.port != Some(d.port))
            .map(|ip| Change::SetAddr {
                backend: d.backend.clone(),
                server: d.server.clone(),
                from: row.addr,
                from_port: row.port,
                addr: ip,
                port: d.port,
            });
        let state = (row.state() != d.state).then(|| Change::SetState {
            backend: d.backend.clone(),
            server: d.server.clone(),
            from: row.state(),
            to: d.state,
        });
        let ordered = if d.state == ServerAdminState::Ready {
            [addr, state]
        } else {
            [state, addr]
        };
        out.changes.extend(ordered.into_iter().flatten());
        if d.state == ServerAdminState::Drain {
            out.unstick
                .push((d.backend.clone(), d.server.clone(), row.id));
        }
    }
    out
}

/// Brings every desired server to its address and state: reads `show servers state` of each
/// backend named in `desired`, then sends only the changes [`plan`] finds, logging each one, and
/// clears the stick-table entries of draining servers in `sticky` (the backends with a stick
/// table). A failure is recorded and the rest is still attempted.
pub async fn converge(
    api: &AdminApi,
    desired: &[DesiredServer],
    sticky: &[&str],
) -> ConvergeReport {
    let mut report = ConvergeReport::default();
    let mut backends: Vec<&str> = Vec::new();
    for d in desired {
        if !backends.contains(&d.backend.as_str()) {
            backends.push(&d.backend);
        }
    }
    for backend in backends {
        let wanted: Vec<DesiredServer> = desired
            .iter()
            .filter(|d| d.backend == backend)
            .cloned()
            .collect();
        let current = match api.show_servers_state(backend).await {
            Ok(rows) => rows,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        let Plan {
            changes,
            missing,
            unstick,
        } = plan(&wanted, &current);
        for m in &missing {
            debug!(server = %m, "server not in HAProxy yet (waits for a reload)");
        }
        report.missing.extend(missing);
        for change in changes {
            match api.apply(&change).await {
                Ok(()) => {
                    info!(change = %change, "haproxy runtime change");
                    report.applied.push(change);
                }
                Err(e) => {
                    warn!(change = %change, error = %e, "haproxy runtime change failed");
                    report.errors.push(e);
                }
            }
        }
        for (backend, server, id) in unstick.iter().filter(|u| sticky.contains(&u.0.as_str())) {
            match api.clear_sticky(backend, *id).await {
                Ok(()) => {
                    debug!(%backend, %server, "cleared the stick entries of a draining server")
                }
                Err(e) => {
                    warn!(%backend, %server, error = %e, "cannot clear a draining server's stick entries");
                    report.errors.push(e);
                }
            }
        }
    }
    report
}

/// Sends single commands to one HAProxy socket.
#[derive(Clone, Debug)]
pub struct SocketClient {
    path: PathBuf,
    timeout: Duration,
}

impl SocketClient {
    /// A client of the socket at `path`; every call is bounded by `timeout`.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one command and returns the whole answer.
    pub async fn send(&self, command: &str) -> Result<String, RuntimeError> {
        if command.contains(['\n', '\r', ';']) || command.trim().is_empty() {
            return Err(RuntimeError::InvalidCommand(cut(command, 80)));
        }
        match tokio::time::timeout(self.timeout, self.exchange(command)).await {
            Ok(result) => result,
            Err(_) => Err(RuntimeError::Timeout {
                path: self.path.clone(),
                command: command.into(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(&self, command: &str) -> Result<String, RuntimeError> {
        let io = |source| RuntimeError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.path).await.map_err(io)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        // Half-close: the master CLI only answers and closes once the client has finished
        // sending (measured); the admin socket does not mind.
        stream.shutdown().await.map_err(io)?;
        let mut answer = Vec::new();
        let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1);
        limited.read_to_end(&mut answer).await.map_err(io)?;
        if answer.len() > MAX_RESPONSE_BYTES {
            return Err(RuntimeError::TooLong {
                path: self.path.clone(),
                command: command.into(),
            });
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

/// The worker's admin socket.
#[derive(Clone, Debug)]
pub struct AdminApi {
    client: SocketClient,
}

impl AdminApi {
    /// The admin socket at `path`.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            client: SocketClient::new(path, timeout),
        }
    }

    /// The underlying socket client (for other commands, e.g. `show table mqtt`).
    pub fn client(&self) -> &SocketClient {
        &self.client
    }

    /// `show servers state <backend>`, parsed.
    pub async fn show_servers_state(
        &self,
        backend: &str,
    ) -> Result<Vec<ServerStateRow>, RuntimeError> {
        let command = cmd_show_servers_state(backend)?;
        let answer = self.client.send(&command).await?;
        parse_servers_state(&answer).map_err(|e| match e {
            RuntimeError::Refused { answer, .. } => RuntimeError::Refused { command, answer },
            RuntimeError::Parse { reason, .. } => RuntimeError::Parse { command, reason },
            other => other,
        })
    }

    /// Sets a server's address and port.
    pub async fn set_addr(
        &self,
        backend: &str,
        server: &str,
        addr: IpAddr,
        port: u16,
    ) -> Result<(), RuntimeError> {
        let command = cmd_set_addr(backend, server, addr, port)?;
        let answer = self.client.send(&command).await?;
        let answer = answer.trim();
        if answer.starts_with("IP changed") || answer.starts_with("no need to change") {
            Ok(())
        } else {
            Err(RuntimeError::Refused {
                command,
                answer: cut(answer, 200),
            })
        }
    }

    /// Sets a server's administrative state.
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: ServerAdminState,
    ) -> Result<(), RuntimeError> {
        self.silent(cmd_set_state(backend, server, state)?).await
    }

    /// Forgets every client stuck to server `server_id` in the stick table of `table`.
    pub async fn clear_sticky(&self, table: &str, server_id: u32) -> Result<(), RuntimeError> {
        self.silent(cmd_clear_sticky(table, server_id)?).await
    }

    /// Sends a command that answers nothing on success; any answer is a refusal.
    async fn silent(&self, command: String) -> Result<(), RuntimeError> {
        let answer = self.client.send(&command).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Refused {
                command,
                answer: cut(answer.trim(), 200),
            })
        }
    }

    /// Makes one planned change.
    pub async fn apply(&self, change: &Change) -> Result<(), RuntimeError> {
        match change {
            Change::SetAddr {
                backend,
                server,
                addr,
                port,
                ..
            } => self.set_addr(backend, server, *addr, *port).await,
            Change::SetState {
                backend,
                server,
                to,
                ..
            } => self.set_state(backend, server, *to).await,
        }
    }
}

/// The master CLI socket (`haproxy -W -S <path>`).
#[derive(Clone, Debug)]
pub struct MasterApi {
    client: SocketClient,
}

impl MasterApi {
    /// The master socket at `path`.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            client: SocketClient::new(path, timeout),
        }
    }

    /// `show proc`, parsed.
    pub async fn show_proc(&self) -> Result<ProcInfo, RuntimeError> {
        parse_show_proc(&self.client.send("show proc").await?)
    }

    /// Asks the master to reload (re-read the configuration and start a new worker; the old one
    /// finishes its connections), then waits up to `wait` until `show proc` reports the outcome.
    pub async fn reload(&self, wait: Duration) -> Result<Reloaded, RuntimeError> {
        let before = self.show_proc().await?;
        // The master closes the connection without an answer when it re-executes.
        let answer = self.client.send("reload").await?;
        if !answer.trim().is_empty() {
            debug!(answer = %answer.trim(), "answer to reload");
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut last: String;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self.show_proc().await {
                Ok(after) if after.reloads > before.reloads => {
                    if after.failed_reloads > 0 {
                        return Err(RuntimeError::ReloadFailed {
                            failed: after.failed_reloads,
                        });
                    }
                    if after.workers.iter().any(|w| !before.workers.contains(w)) {
                        return Ok(Reloaded {
                            after,
                            workers_before: before.workers,
                        });
                    }
                    last = format!("reloaded, no new worker yet: {after:?}");
                }
                Ok(after) => last = format!("not reloaded yet: {after:?}"),
                // The socket refuses connections while the master re-executes.
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::ReloadTimeout {
                    timeout: wait,
                    last,
                });
            }
        }
    }
}

/// At most `max` characters of `s`, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";

    /// Captured from HAProxy 2.6.12: demo-0 up, demo-1 rendered `disabled` at the placeholder,
    /// demo-2 down; the tracking backend inherits maintenance (7 = forced + inherited + configured).
    fn captured() -> String {
        format!(
            "1\n{HEADER}\n\
             3 mqtt 1 demo-0 127.0.0.1 2 0 1 1 3 6 3 3 6 0 0 0 - 21883 - 0 0 - - 0\n\
             3 mqtt 2 demo-1 0.0.0.0 0 5 1 1 3 1 0 0 14 0 0 0 - 21884 - 0 0 - - 0\n\
             3 mqtt 3 demo-2 127.0.0.1 0 0 1 1 2 8 2 0 6 0 0 0 - 21885 - 0 0 - - 0\n\
             5 mqtt_ws 1 demo-0 127.0.0.1 2 0 1 1 3 1 0 2 0 0 0 0 - 21883 - 0 0 - - 0\n\
             5 mqtt_ws 2 demo-1 0.0.0.0 0 7 1 1 3 1 0 0 8 0 0 0 - 21884 - 0 0 - - 0\n\n"
        )
    }

    fn row(
        backend: &str,
        server: &str,
        addr: Option<&str>,
        port: u16,
        admin: u8,
    ) -> ServerStateRow {
        ServerStateRow {
            backend: backend.into(),
            id: server
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .map_or(1, |n| n + 1),
            server: server.into(),
            addr: addr.map(|a| a.parse().unwrap()),
            port: Some(port),
            op_state: 2,
            admin_flags: admin,
        }
    }

    fn want(
        backend: &str,
        server: &str,
        addr: Option<&str>,
        port: u16,
        state: ServerAdminState,
    ) -> DesiredServer {
        DesiredServer {
            backend: backend.into(),
            server: server.into(),
            addr: addr.map(|a| a.parse().unwrap()),
            port,
            state,
        }
    }

    #[test]
    fn parses_a_captured_show_servers_state() {
        let rows = parse_servers_state(&captured()).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[0],
            ServerStateRow {
                backend: "mqtt".into(),
                id: 1,
                server: "demo-0".into(),
                addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: Some(21883),
                op_state: 2,
                admin_flags: 0,
            }
        );
        assert!(rows[0].is_running());
        assert_eq!(rows[0].state(), ServerAdminState::Ready);
        assert_eq!(rows[1].addr, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(rows[1].state(), ServerAdminState::Maint);
        assert!(!rows[2].is_running());
        assert_eq!(rows[4].backend, "mqtt_ws");
        assert_eq!((rows[2].id, rows[4].id), (3, 2));
        assert_eq!(rows[4].state(), ServerAdminState::Maint);
    }

    #[test]
    fn the_own_state_ignores_configured_and_inherited_bits() {
        let state = |flags| row("b", "s", None, 1, flags).state();
        // Rendered `disabled`, then set ready: only the configured bit is left (measured).
        assert_eq!(state(ADMIN_CONFIG_MAINT), ServerAdminState::Ready);
        assert_eq!(state(ADMIN_INHERITED_MAINT), ServerAdminState::Ready);
        assert_eq!(state(ADMIN_INHERITED_DRAIN), ServerAdminState::Ready);
        assert_eq!(state(ADMIN_RESOLUTION_MAINT), ServerAdminState::Ready);
        assert_eq!(state(ADMIN_FORCED_DRAIN), ServerAdminState::Drain);
        assert_eq!(state(ADMIN_FORCED_DRAIN | 0x02), ServerAdminState::Drain);
        assert_eq!(
            state(ADMIN_FORCED_MAINT | ADMIN_CONFIG_MAINT),
            ServerAdminState::Maint
        );
        assert_eq!(
            state(ADMIN_FORCED_MAINT | ADMIN_FORCED_DRAIN),
            ServerAdminState::Maint,
            "maintenance wins over drain"
        );
    }

    #[test]
    fn parses_by_column_name_and_ipv6_and_missing_values() {
        let text = "1\n# srv_name be_name srv_port srv_admin_state srv_id srv_op_state srv_addr\n\
                    demo-0 mqtt 1883 8 7 2 fd00::1\n\
                    demo-1 mqtt 0 0 8 0 -\n";
        let rows = parse_servers_state(text).unwrap();
        assert_eq!(
            rows[0].addr,
            Some(IpAddr::V6("fd00::1".parse::<Ipv6Addr>().unwrap()))
        );
        assert_eq!(rows[0].state(), ServerAdminState::Drain);
        assert_eq!(rows[0].port, Some(1883));
        assert_eq!((rows[0].id, rows[1].id), (7, 8));
        assert_eq!(rows[1].addr, None);
        assert_eq!(rows[1].port, None);
        assert!(parse_servers_state(&format!("1\n{HEADER}\n"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn error_answers_and_malformed_text_are_errors() {
        let refused = parse_servers_state("Can't find backend.\n").unwrap_err();
        assert!(
            matches!(&refused, RuntimeError::Refused { answer, .. } if answer == "Can't find backend."),
            "{refused:?}"
        );
        for bad in [
            String::new(),
            "1\n".to_string(),
            "1\n3 mqtt 1 demo-0\n".to_string(),
            format!("1\n{HEADER}\n3 mqtt 1 demo-0 127.0.0.1 2\n"),
            format!(
                "1\n{HEADER}\n3 mqtt 1 demo-0 127.0.0.1 x 0 1 1 3 6 3 3 6 0 0 0 - 1 - 0 0 - - 0\n"
            ),
            "1\n# be_name srv_name srv_addr\nmqtt a 1.2.3.4\n".to_string(),
        ] {
            assert!(
                matches!(parse_servers_state(&bad), Err(RuntimeError::Parse { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn commands_are_built_from_checked_names() {
        assert_eq!(
            cmd_show_servers_state("mqtt").unwrap(),
            "show servers state mqtt"
        );
        assert_eq!(
            cmd_set_addr("mqtt_ws", "demo-0", "10.0.0.1".parse().unwrap(), 8083).unwrap(),
            "set server mqtt_ws/demo-0 addr 10.0.0.1 port 8083"
        );
        assert_eq!(
            cmd_set_addr("mqtt", "demo-0", "fd00::a".parse().unwrap(), 1883).unwrap(),
            "set server mqtt/demo-0 addr fd00::a port 1883"
        );
        for (state, word) in [
            (ServerAdminState::Ready, "ready"),
            (ServerAdminState::Drain, "drain"),
            (ServerAdminState::Maint, "maint"),
        ] {
            assert_eq!(
                cmd_set_state("mqtt", "demo-1", state).unwrap(),
                format!("set server mqtt/demo-1 state {word}")
            );
        }
        for bad in [
            "",
            "demo 1",
            "demo-1;shutdown sessions server mqtt/x",
            "a/b",
            "a\nb",
            "é",
            &"a".repeat(254),
        ] {
            assert!(
                matches!(
                    cmd_set_state("mqtt", bad, ServerAdminState::Ready),
                    Err(RuntimeError::InvalidName(_))
                ),
                "{bad:?}"
            );
            assert!(cmd_show_servers_state(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_socket_client_refuses_several_commands() {
        let client = SocketClient::new("/nonexistent/socket", Duration::from_millis(100));
        for bad in ["show info; show stat", "a\nb", "a\r", "  "] {
            assert!(
                matches!(client.send(bad).await, Err(RuntimeError::InvalidCommand(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            client.send("show info").await,
            Err(RuntimeError::Io { .. })
        ));
    }

    #[test]
    fn parses_show_proc() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
                    23297           master          2 [failed: 1]   0d00h00m19s     2.6.12-1+deb12u4\n\
                    # workers\n\
                    23961           worker          1               0d00h00m04s     2.6.12-1+deb12u4\n\
                    # old workers\n\
                    23300           worker          2               0d00h00m19s     2.6.12-1+deb12u4\n\
                    # programs\n\n";
        assert_eq!(
            parse_show_proc(text).unwrap(),
            ProcInfo {
                master_pid: 23297,
                reloads: 2,
                failed_reloads: 1,
                workers: vec![23961],
                old_workers: vec![23300],
            }
        );
        let fresh = "#<PID> <type> <reloads> <uptime> <version>\n1 master 0 [failed: 0] 0d 2.6\n# workers\n2 worker 0 0d 2.6\n";
        let p = parse_show_proc(fresh).unwrap();
        assert_eq!((p.reloads, p.failed_reloads, p.workers), (0, 0, vec![2]));
        assert!(parse_show_proc("").is_err());
        assert!(parse_show_proc("Unknown command.\n").is_err());
        assert!(parse_show_proc("1 master x [failed: 0]\n").is_err());
    }

    #[test]
    fn plan_sends_only_what_differs() {
        let current = vec![
            row("mqtt", "demo-0", Some("10.0.0.1"), 1883, 0),
            row("mqtt", "demo-1", Some("10.0.0.2"), 1883, ADMIN_FORCED_DRAIN),
        ];
        let desired = vec![
            want(
                "mqtt",
                "demo-0",
                Some("10.0.0.1"),
                1883,
                ServerAdminState::Ready,
            ),
            want(
                "mqtt",
                "demo-1",
                Some("10.0.0.2"),
                1883,
                ServerAdminState::Drain,
            ),
        ];
        assert_eq!(
            plan(&desired, &current),
            Plan {
                unstick: vec![("mqtt".into(), "demo-1".into(), 2)],
                ..Plan::default()
            },
            "nothing to change; a draining server's stick entries are cleared every round"
        );
        assert_eq!(
            cmd_clear_sticky("mqtt", 2).unwrap(),
            "clear table mqtt data.server_id eq 2"
        );
        assert!(cmd_clear_sticky("mqtt\nshutdown", 2).is_err());
    }

    #[test]
    fn plan_sets_the_address_before_making_a_server_ready() {
        let current = vec![row(
            "mqtt",
            "demo-1",
            Some("0.0.0.0"),
            1883,
            ADMIN_FORCED_MAINT | ADMIN_CONFIG_MAINT,
        )];
        let desired = vec![want(
            "mqtt",
            "demo-1",
            Some("10.0.0.2"),
            1883,
            ServerAdminState::Ready,
        )];
        let p = plan(&desired, &current);
        assert_eq!(
            p.changes
                .iter()
                .map(|c| c.command().unwrap())
                .collect::<Vec<_>>(),
            [
                "set server mqtt/demo-1 addr 10.0.0.2 port 1883",
                "set server mqtt/demo-1 state ready",
            ]
        );
        assert_eq!(
            p.changes[0].to_string(),
            "mqtt/demo-1 address 0.0.0.0:1883 -> 10.0.0.2:1883"
        );
        assert_eq!(p.changes[1].to_string(), "mqtt/demo-1 state maint -> ready");
    }

    #[test]
    fn plan_takes_a_server_out_before_changing_its_address() {
        let current = vec![
            row("mqtt", "demo-1", Some("10.0.0.2"), 1883, 0),
            row("mqtt", "demo-2", Some("10.0.0.3"), 1883, 0),
        ];
        let desired = vec![
            want(
                "mqtt",
                "demo-1",
                Some("10.0.0.9"),
                1883,
                ServerAdminState::Maint,
            ),
            want(
                "mqtt",
                "demo-2",
                Some("10.0.0.8"),
                1883,
                ServerAdminState::Drain,
            ),
        ];
        let cmds: Vec<String> = plan(&desired, &current)
            .changes
            .iter()
            .map(|c| c.command().unwrap())
            .collect();
        assert_eq!(
            cmds,
            [
                "set server mqtt/demo-1 state maint",
                "set server mqtt/demo-1 addr 10.0.0.9 port 1883",
                "set server mqtt/demo-2 state drain",
                "set server mqtt/demo-2 addr 10.0.0.8 port 1883",
            ]
        );
    }

    #[test]
    fn plan_keeps_the_address_when_none_is_known_and_fixes_ports() {
        let current = vec![
            row("mqtt", "demo-0", Some("10.0.0.1"), 1883, 0),
            row("mqtt_ws", "demo-0", Some("10.0.0.1"), 1883, 0),
        ];
        let desired = vec![
            want("mqtt", "demo-0", None, 1883, ServerAdminState::Maint),
            want(
                "mqtt_ws",
                "demo-0",
                Some("10.0.0.1"),
                8083,
                ServerAdminState::Ready,
            ),
        ];
        let cmds: Vec<String> = plan(&desired, &current)
            .changes
            .iter()
            .map(|c| c.command().unwrap())
            .collect();
        assert_eq!(
            cmds,
            [
                "set server mqtt/demo-0 state maint",
                "set server mqtt_ws/demo-0 addr 10.0.0.1 port 8083",
            ]
        );
    }

    #[test]
    fn plan_reports_servers_haproxy_lacks() {
        let current = vec![row("mqtt", "demo-0", Some("10.0.0.1"), 1883, 0)];
        let desired = vec![
            want(
                "mqtt",
                "demo-0",
                Some("10.0.0.1"),
                1883,
                ServerAdminState::Ready,
            ),
            want(
                "mqtt",
                "demo-3",
                Some("10.0.0.4"),
                1883,
                ServerAdminState::Ready,
            ),
            want(
                "mqtt_ws",
                "demo-0",
                Some("10.0.0.1"),
                8083,
                ServerAdminState::Ready,
            ),
        ];
        let p = plan(&desired, &current);
        assert!(p.changes.is_empty());
        assert_eq!(p.missing, ["mqtt/demo-3", "mqtt_ws/demo-0"]);
    }

    #[test]
    fn cut_marks_cut_text() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
    }
}
