//! The components' flags, the token file, kubeconfigs, free ports, readiness and log tails.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use crate::{Error, IoContext as _, KubeContext as _, Result};

/// etcd's flags: one member named `name`, data in `data_dir`, client and peer URLs on loopback, no
/// fsync (the data is disposable).
pub fn etcd_args(name: &str, data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={name}={peer}"),
        "--unsafe-no-fsync=true".to_string(),
    ]
}

/// What kube-apiserver needs to know; [`ApiServer::args`] turns it into flags.
#[derive(Clone, Debug)]
pub struct ApiServer {
    /// etcd's client URL, `http://127.0.0.1:<port>`.
    pub etcd_url: String,
    /// The HTTPS port on 127.0.0.1.
    pub port: u16,
    /// `--advertise-address`; it also goes into the self-signed serving certificate.
    pub advertise_address: String,
    /// Where the API server writes its self-signed `apiserver.crt` (the kubeconfigs' CA).
    pub cert_dir: PathBuf,
    /// `--service-cluster-ip-range`.
    pub service_cluster_ip_range: String,
    /// The service-account public key (PKIX PEM).
    pub sa_public_key: PathBuf,
    /// The service-account private key (PKCS#8 PEM).
    pub sa_private_key: PathBuf,
    /// The static token file ([`token_csv`]).
    pub token_file: PathBuf,
}

impl ApiServer {
    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The flags (control-plane.md's minimal set): loopback only, RBAC, token authentication, the
    /// ServiceAccount admission plugin off (Pods get no projected token volume), no endpoint
    /// reconciler.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--etcd-servers={}", self.etcd_url),
            "--bind-address=127.0.0.1".to_string(),
            format!("--advertise-address={}", self.advertise_address),
            format!("--secure-port={}", self.port),
            format!("--cert-dir={}", self.cert_dir.display()),
            format!(
                "--service-cluster-ip-range={}",
                self.service_cluster_ip_range
            ),
            format!("--service-account-issuer={}/", self.url()),
            format!(
                "--service-account-key-file={}",
                self.sa_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                self.sa_private_key.display()
            ),
            "--authorization-mode=RBAC".to_string(),
            format!("--token-auth-file={}", self.token_file.display()),
            "--allow-privileged=true".to_string(),
            "--disable-admission-plugins=ServiceAccount".to_string(),
            // The default reconciler puts the advertise address into the `kubernetes` Endpoints,
            // which rejects loopback addresses: an error in the log every 10 s, and no use here.
            "--endpoint-reconciler-type=none".to_string(),
        ]
    }
}

/// kube-controller-manager's flags: no leader election, no serving port, the admin's credentials
/// for every controller, the service-account key and root CA (for token Secrets and
/// `kube-root-ca.crt`), and `controllers` (`["*"]`, `["*", "-nodelifecycle"]`, ...).
pub fn controller_manager_args(
    kubeconfig: &Path,
    sa_private_key: &Path,
    root_ca: &Path,
    controllers: &[String],
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".to_string(),
        // No serving endpoint: nothing to probe it with a certificate for.
        "--secure-port=0".to_string(),
        "--use-service-account-credentials=false".to_string(),
        format!(
            "--service-account-private-key-file={}",
            sa_private_key.display()
        ),
        format!("--root-ca-file={}", root_ca.display()),
        format!("--controllers={}", controllers.join(",")),
    ]
}

/// One line of the API server's `--token-auth-file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUser {
    /// The user name; no commas, quotes or newlines.
    pub name: String,
    /// Its bearer token.
    pub token: String,
    /// Its groups (`system:masters` for an admin).
    pub groups: Vec<String>,
}

/// kube-apiserver's `--token-auth-file`: `token,user,uid,"group1,group2"`.
pub fn token_csv(users: &[TokenUser]) -> String {
    let mut csv = String::new();
    for u in users {
        let _ = writeln!(
            csv,
            "{},{},{}-uid,\"{}\"",
            u.token,
            u.name,
            u.name,
            u.groups.join(",")
        );
    }
    csv
}

/// A kubeconfig for one cluster (`cluster`, at `server`, CA file `ca`) with one user and one
/// context per `(name, token)` (both named `name`); `current` is the current context.
pub fn kubeconfig_yaml(
    cluster: &str,
    server: &str,
    ca: &Path,
    users: &[(&str, &str)],
    current: &str,
) -> String {
    // JSON strings are YAML strings: serde_json does the quoting.
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    let _ = writeln!(
        y,
        "- name: {}\n  cluster:\n    server: {}\n    certificate-authority: {}",
        q(cluster),
        q(server),
        q(&ca.display().to_string())
    );
    y.push_str("users:\n");
    for (name, token) in users {
        let _ = writeln!(y, "- name: {}\n  user:\n    token: {}", q(name), q(token));
    }
    y.push_str("contexts:\n");
    for (name, _) in users {
        let _ = writeln!(
            y,
            "- name: {n}\n  context:\n    cluster: {c}\n    user: {n}\n    namespace: default",
            n = q(name),
            c = q(cluster)
        );
    }
    let _ = writeln!(y, "current-context: {}", q(current));
    y
}

/// Writes `contents` to `path`, readable by the owner only (mode 0600), replacing any old file.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .io_context(|| format!("cannot create {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .io_context(|| format!("cannot restrict {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .io_context(|| format!("cannot write {}", path.display()))
}

/// `N` distinct free loopback ports. All are held open until all are chosen, so they differ;
/// another process can still take one before it is used.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in ports.iter_mut() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .io_context(|| "cannot bind a free port".to_string())?;
        *port = l
            .local_addr()
            .io_context(|| "no local address".to_string())?
            .port();
        listeners.push(l);
    }
    Ok(ports)
}

/// `Ok` when the API server's `/readyz` answers `ok`.
pub async fn readyz(client: &kube::Client) -> Result<()> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| Error::Unexpected(format!("cannot build the /readyz request: {e}")))?;
    let body = client
        .request_text(request)
        .await
        .kube_context(|| "GET /readyz".to_string())?;
    if body.trim() == "ok" {
        Ok(())
    } else {
        Err(Error::Unexpected(format!("/readyz answered {body:?}")))
    }
}

/// A command for `program args...` in `cwd`, stdin from /dev/null, stdout and stderr to `log`
/// (created or truncated): how every component is started.
pub fn logged_command(
    program: &Path,
    args: &[String],
    cwd: &Path,
    log: &Path,
) -> Result<std::process::Command> {
    let out = File::create(log).io_context(|| format!("cannot create {}", log.display()))?;
    let err = out
        .try_clone()
        .io_context(|| format!("cannot reopen {}", log.display()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    Ok(cmd)
}

/// The last `lines` lines of a file (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_quotes_groups() {
        let users = [
            TokenUser {
                name: "admin".into(),
                token: "t1".into(),
                groups: vec!["system:masters".into()],
            },
            TokenUser {
                name: "reader".into(),
                token: "t2".into(),
                groups: vec!["g1".into(), "g2".into()],
            },
        ];
        assert_eq!(
            token_csv(&users),
            "t1,admin,admin-uid,\"system:masters\"\nt2,reader,reader-uid,\"g1,g2\"\n"
        );
    }

    #[test]
    fn kubeconfig_parses_with_a_context_per_user() {
        let yaml = kubeconfig_yaml(
            "c",
            "https://127.0.0.1:1",
            Path::new("/x/ca.crt"),
            &[("admin", "t1"), ("reader", "t2")],
            "admin",
        );
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
        assert_eq!(kc.current_context.as_deref(), Some("admin"));
        assert_eq!(kc.contexts.len(), 2);
        assert_eq!(kc.auth_infos.len(), 2);
    }

    #[test]
    fn free_ports_differ() {
        let [a, b, c] = free_ports::<3>().expect("ports");
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn apiserver_flags_name_the_files() {
        let api = ApiServer {
            etcd_url: "http://127.0.0.1:2".into(),
            port: 3,
            advertise_address: "127.0.0.1".into(),
            cert_dir: "/p".into(),
            service_cluster_ip_range: "10.0.0.0/16".into(),
            sa_public_key: "/p/sa.pub".into(),
            sa_private_key: "/p/sa.key".into(),
            token_file: "/p/tokens.csv".into(),
        };
        let args = api.args();
        assert!(args.contains(&"--secure-port=3".to_string()));
        assert!(args.contains(&"--service-account-issuer=https://127.0.0.1:3/".to_string()));
        assert!(args.contains(&"--token-auth-file=/p/tokens.csv".to_string()));
    }
}
