//! Volumes: materialised under the Pod's directory (`<pod dir>/volumes/<volume>`) and bind-mounted
//! by the container's init at their mount paths.
//!
//! | source | what the agent does |
//! |---|---|
//! | `configMap`, `secret` | writes the keys (or `items`) as files with `mode`/`defaultMode` (0644), owned by root; mounted read-only |
//! | `downwardAPI` | writes `fieldRef`/`resourceFieldRef` items; read-only |
//! | `projected` | the above plus `serviceAccountToken` (a TokenRequest); read-only |
//! | `emptyDir` | a directory that lives as long as the Pod |
//! | `persistentVolumeClaim`, `ephemeral` | the claim's directory ([`super::pvc`]): survives the Pod |
//! | `hostPath` | the host path itself |
//!
//! A missing required ConfigMap or Secret fails the Pod's start (it stays `ContainerCreating`
//! with the message, and is retried) as the kubelet's `FailedMount` does. Files are refreshed
//! before each container (re)start.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::env::{self, Env, FieldContext};
use super::process::Mount;
use super::pvc;

/// The default file mode of configMap, secret, downwardAPI and projected volumes.
pub const DEFAULT_MODE: u32 = 0o644;

/// Errors materialising volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A required object does not exist.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {kind} {name:?} not found")]
    NotFound {
        /// The volume.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object.
        name: String,
    },
    /// A required key does not exist.
    #[error(
        "MountVolume.SetUp failed for volume {volume:?}: key {key:?} not found in {kind} {name:?}"
    )]
    KeyNotFound {
        /// The volume.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object.
        name: String,
        /// The key.
        key: String,
    },
    /// A path that would leave the volume.
    #[error("volume {volume:?}: invalid path {path:?}")]
    BadPath {
        /// The volume.
        volume: String,
        /// The path.
        path: String,
    },
    /// A volume source the agent cannot provide.
    #[error("volume {volume:?}: {what} volumes are not supported by the devcluster agent")]
    Unsupported {
        /// The volume.
        volume: String,
        /// Its kind.
        what: String,
    },
    /// A container mounts a volume the Pod does not define.
    #[error("container {container:?} mounts volume {volume:?}, which the pod does not define")]
    UnknownVolume {
        /// The container.
        container: String,
        /// The volume.
        volume: String,
    },
    /// A downward API item failed.
    #[error("volume {volume:?}: {source}")]
    Field {
        /// The volume.
        volume: String,
        /// Why.
        source: env::EnvError,
    },
    /// A hostPath of the wrong type.
    #[error("volume {volume:?}: hostPath {path} is not a {wanted}")]
    HostPath {
        /// The volume.
        volume: String,
        /// The path.
        path: String,
        /// `directory`, `file`, ...
        wanted: &'static str,
    },
    /// An API request failed.
    #[error("volume {volume:?}: {source}")]
    Api {
        /// The volume.
        volume: String,
        /// Why.
        source: kube::Error,
    },
    /// A claim could not be resolved.
    #[error("volume {volume:?}: {source}")]
    Claim {
        /// The volume.
        volume: String,
        /// Why.
        source: pvc::PvcError,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// A file to write into a volume directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative to the volume directory.
    pub path: String,
    /// The contents.
    pub data: Vec<u8>,
    /// The permission bits.
    pub mode: u32,
}

/// What kind of directory a volume is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Materialised {
    /// Files the agent writes (read-only in the container).
    Files(PathBuf),
    /// A directory the container writes (`emptyDir`, claims, `hostPath`).
    Dir(PathBuf),
}

impl Materialised {
    fn path(&self) -> &Path {
        match self {
            Materialised::Files(p) | Materialised::Dir(p) => p,
        }
    }
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    // stringData is write-only in the API, but keep it for objects built in tests.
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

fn config_map_data(c: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in c.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// The files of a configMap or secret source: every key, or the `items`; `None` data means the
/// object does not exist.
pub fn key_files(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: u32,
) -> Result<Vec<FileSpec>, VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(vec![]);
        }
        return Err(VolumeError::NotFound {
            volume: volume.to_string(),
            kind,
            name: name.to_string(),
        });
    };
    let mut files = Vec::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                files.push(FileSpec {
                    path: k,
                    data: v,
                    mode: default_mode,
                });
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => files.push(FileSpec {
                        path: item.path.clone(),
                        data: v.clone(),
                        mode: item.mode.map(|m| m as u32).unwrap_or(default_mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(VolumeError::KeyNotFound {
                            volume: volume.to_string(),
                            kind,
                            name: name.to_string(),
                            key: item.key.clone(),
                        })
                    }
                }
            }
        }
    }
    for f in &files {
        check_relative(volume, &f.path)?;
    }
    Ok(files)
}

/// The files of downward API items.
pub fn downward_files(
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    fields: &FieldContext,
) -> Result<Vec<FileSpec>, VolumeError> {
    let field_err = |source| VolumeError::Field {
        volume: volume.to_string(),
        source,
    };
    let mut files = Vec::new();
    for item in items {
        check_relative(volume, &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            env::field_value(pod, &f.field_path, fields, true).map_err(field_err)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.clone().unwrap_or_default();
            env::resource_value(pod, &container, &r.resource, r.divisor.as_ref(), fields)
                .map_err(field_err)?
        } else {
            continue;
        };
        files.push(FileSpec {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode: item.mode.map(|m| m as u32).unwrap_or(default_mode),
        });
    }
    Ok(files)
}

fn check_relative(volume: &str, path: &str) -> Result<(), VolumeError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadPath {
            volume: volume.to_string(),
            path: path.to_string(),
        })
    }
}

/// Replaces the contents of `dir` with `files` (the directory itself stays: it may be mounted).
pub fn write_files(dir: &Path, files: &[FileSpec]) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    for entry in std::fs::read_dir(dir)
        .map_err(io(format!("cannot read {}", dir.display())))?
        .flatten()
    {
        let path = entry.path();
        let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        res.map_err(io(format!("cannot remove {}", path.display())))?;
    }
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        std::fs::write(&path, &f.data).map_err(io(format!("cannot write {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(io(format!("cannot chmod {}", path.display())))?;
    }
    Ok(())
}

/// Where everything of one Pod lives.
#[derive(Clone, Debug)]
pub struct PodPaths {
    /// `<state>/pods/<ns>_<pod>_<uid>`.
    pub dir: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
}

impl PodPaths {
    /// The directory of a volume.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    /// A container's log.
    pub fn log(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log"))
    }

    /// A container's init script.
    pub fn init_script(&self, container: &str) -> PathBuf {
        self.dir.join("run").join(format!("{container}.sh"))
    }

    /// A container's termination message file (bind-mounted at its `terminationMessagePath`).
    pub fn termination(&self, container: &str) -> PathBuf {
        self.dir.join("termination").join(container)
    }

    /// The Pod's private `/tmp`.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

fn mode_of(m: Option<i32>) -> u32 {
    m.map(|m| m as u32).unwrap_or(DEFAULT_MODE)
}

/// The data of the named Secret or ConfigMap (`None` when it does not exist).
async fn get_data<K>(
    client: &Client,
    ns: &str,
    volume: &str,
    name: &str,
    data: fn(&K) -> BTreeMap<String, Vec<u8>>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map(|o| o.as_ref().map(data))
        .map_err(|source| VolumeError::Api {
            volume: volume.to_string(),
            source,
        })
}

async fn service_account_token(
    client: &Client,
    pod: &Pod,
    volume: &str,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<Vec<u8>, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration.unwrap_or(3600).max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let out: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .map_err(|source| VolumeError::Api {
            volume: volume.to_string(),
            source,
        })?;
    Ok(out.status.map(|s| s.token).unwrap_or_default().into_bytes())
}

/// Materialises every volume of the Pod; returns each volume's host directory.
pub async fn materialise(
    client: &Client,
    pod: &Pod,
    paths: &PodPaths,
    fields: &FieldContext,
) -> Result<BTreeMap<String, Materialised>, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let volumes: Vec<Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in volumes {
        let dir = paths.volume(&v.name);
        let name = v.name.as_str();
        let m = if let Some(cm) = &v.config_map {
            let data = get_data::<ConfigMap>(client, &ns, name, &cm.name, config_map_data).await?;
            let files = key_files(
                name,
                "configmap",
                &cm.name,
                data,
                cm.items.as_deref(),
                cm.optional == Some(true),
                mode_of(cm.default_mode),
            )?;
            write_files(&dir, &files)?;
            Materialised::Files(dir)
        } else if let Some(s) = &v.secret {
            let secret_name = s.secret_name.clone().unwrap_or_default();
            let data = get_data::<Secret>(client, &ns, name, &secret_name, secret_data).await?;
            let files = key_files(
                name,
                "secret",
                &secret_name,
                data,
                s.items.as_deref(),
                s.optional == Some(true),
                mode_of(s.default_mode),
            )?;
            write_files(&dir, &files)?;
            Materialised::Files(dir)
        } else if let Some(d) = &v.downward_api {
            let files = downward_files(
                name,
                pod,
                d.items.as_deref().unwrap_or_default(),
                mode_of(d.default_mode),
                fields,
            )?;
            write_files(&dir, &files)?;
            Materialised::Files(dir)
        } else if let Some(p) = &v.projected {
            let default_mode = mode_of(p.default_mode);
            let mut files = Vec::new();
            for source in p.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    let data =
                        get_data::<ConfigMap>(client, &ns, name, &cm.name, config_map_data).await?;
                    files.extend(key_files(
                        name,
                        "configmap",
                        &cm.name,
                        data,
                        cm.items.as_deref(),
                        cm.optional == Some(true),
                        default_mode,
                    )?);
                } else if let Some(s) = &source.secret {
                    let data = get_data::<Secret>(client, &ns, name, &s.name, secret_data).await?;
                    files.extend(key_files(
                        name,
                        "secret",
                        &s.name,
                        data,
                        s.items.as_deref(),
                        s.optional == Some(true),
                        default_mode,
                    )?);
                } else if let Some(d) = &source.downward_api {
                    files.extend(downward_files(
                        name,
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        default_mode,
                        fields,
                    )?);
                } else if let Some(t) = &source.service_account_token {
                    check_relative(name, &t.path)?;
                    let token = service_account_token(
                        client,
                        pod,
                        name,
                        t.audience.clone(),
                        t.expiration_seconds,
                    )
                    .await?;
                    files.push(FileSpec {
                        path: t.path.clone(),
                        data: token,
                        mode: default_mode,
                    });
                } else {
                    return Err(VolumeError::Unsupported {
                        volume: name.to_string(),
                        what: "this projected source of".into(),
                    });
                }
            }
            write_files(&dir, &files)?;
            Materialised::Files(dir)
        } else if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)
                .map_err(io(format!("cannot create {}", dir.display())))?;
            Materialised::Dir(dir)
        } else if let Some(claim) = &v.persistent_volume_claim {
            let path = pvc::claim_path(client, &paths.state_dir, &ns, &claim.claim_name)
                .await
                .map_err(|source| VolumeError::Claim {
                    volume: name.to_string(),
                    source,
                })?;
            Materialised::Dir(path)
        } else if v.ephemeral.is_some() {
            // The ephemeral-volume controller names the claim <pod>-<volume>.
            let claim = format!("{pod_name}-{name}");
            let path = pvc::claim_path(client, &paths.state_dir, &ns, &claim)
                .await
                .map_err(|source| VolumeError::Claim {
                    volume: name.to_string(),
                    source,
                })?;
            Materialised::Dir(path)
        } else if let Some(h) = &v.host_path {
            host_path(name, &h.path, h.type_.as_deref().unwrap_or(""))?
        } else {
            let what = serde_json::to_value(&v)
                .ok()
                .and_then(|j| {
                    j.as_object()?
                        .keys()
                        .find(|k| k.as_str() != "name")
                        .cloned()
                })
                .unwrap_or_else(|| "unknown".into());
            return Err(VolumeError::Unsupported {
                volume: name.to_string(),
                what,
            });
        };
        out.insert(v.name.clone(), m);
    }
    Ok(out)
}

fn host_path(volume: &str, path: &str, kind: &str) -> Result<Materialised, VolumeError> {
    let p = PathBuf::from(path);
    let wrong = |wanted| VolumeError::HostPath {
        volume: volume.to_string(),
        path: path.to_string(),
        wanted,
    };
    match kind {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(&p).map_err(io(format!("cannot create {path}")))?
        }
        "FileOrCreate" if !p.exists() => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("cannot create {}", parent.display())))?;
            }
            std::fs::write(&p, b"").map_err(io(format!("cannot create {path}")))?;
        }
        "Directory" if !p.is_dir() => return Err(wrong("directory")),
        "File" if !p.is_file() => return Err(wrong("file")),
        "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => return Err(wrong("device")),
        _ => {}
    }
    Ok(Materialised::Dir(p))
}

/// The mounts of one container: the Pod's private `/tmp`, then each `volumeMount` (subPath and
/// subPathExpr resolved; a subPath that does not exist is created as a directory).
pub fn container_mounts(
    container: &Container,
    volumes: &BTreeMap<String, Materialised>,
    paths: &PodPaths,
    env: &Env,
) -> Result<Vec<Mount>, VolumeError> {
    let tmp = paths.tmp();
    std::fs::create_dir_all(&tmp).map_err(io(format!("cannot create {}", tmp.display())))?;
    let mut mounts = vec![Mount {
        source: tmp,
        target: "/tmp".into(),
        read_only: false,
    }];
    for vm in container.volume_mounts.iter().flatten() {
        let m = volumes
            .get(&vm.name)
            .ok_or_else(|| VolumeError::UnknownVolume {
                container: container.name.clone(),
                volume: vm.name.clone(),
            })?;
        let sub = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => {
                Some(env::expand(e, |n| env.get(n).map(str::to_string)))
            }
            _ => None,
        };
        let mut source = m.path().to_path_buf();
        if let Some(sub) = sub {
            check_relative(&vm.name, &sub)?;
            source = source.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .map_err(io(format!("cannot create {}", source.display())))?;
            }
        }
        let read_only = vm.read_only == Some(true) || matches!(m, Materialised::Files(_));
        mounts.push(Mount {
            source,
            target: vm.mount_path.clone(),
            read_only,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ObjectFieldSelector, PodSpec, VolumeMount};
    use kube::api::ObjectMeta;

    fn data() -> Option<BTreeMap<String, Vec<u8>>> {
        Some(BTreeMap::from([
            (".erlang.cookie".into(), b"COOKIE".to_vec()),
            ("definitions.json".into(), b"{}".to_vec()),
        ]))
    }

    #[test]
    fn secrets_honour_default_mode_and_item_modes() {
        let all = key_files(
            "secret",
            "secret",
            "bus-credentials",
            data(),
            None,
            false,
            0o400,
        )
        .unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|f| f.mode == 0o400));
        let items = [KeyToPath {
            key: ".erlang.cookie".into(),
            path: "cookie/.erlang.cookie".into(),
            mode: Some(0o600),
        }];
        let some = key_files(
            "secret",
            "secret",
            "bus-credentials",
            data(),
            Some(&items),
            false,
            0o400,
        )
        .unwrap();
        assert_eq!(
            some,
            [FileSpec {
                path: "cookie/.erlang.cookie".into(),
                data: b"COOKIE".to_vec(),
                mode: 0o600
            }]
        );
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let err = key_files("v", "secret", "nope", None, None, false, 0o644).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MountVolume.SetUp failed for volume \"v\": secret \"nope\" not found"
        );
        assert!(key_files("v", "secret", "nope", None, None, true, 0o644)
            .unwrap()
            .is_empty());
        let items = [KeyToPath {
            key: "missing".into(),
            path: "m".into(),
            mode: None,
        }];
        assert!(key_files("v", "configmap", "cm", data(), Some(&items), false, 0o644).is_err());
        assert!(
            key_files("v", "configmap", "cm", data(), Some(&items), true, 0o644)
                .unwrap()
                .is_empty()
        );
        let escape = [KeyToPath {
            key: ".erlang.cookie".into(),
            path: "../escape".into(),
            mode: None,
        }];
        assert!(matches!(
            key_files("v", "configmap", "cm", data(), Some(&escape), false, 0o644),
            Err(VolumeError::BadPath { .. })
        ));
    }

    #[test]
    fn downward_api_items_render_fields() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("bus-0".into()),
                namespace: Some("iot".into()),
                labels: Some(BTreeMap::from([
                    ("b".into(), "2".into()),
                    ("a".into(), "1".into()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        };
        let item = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            mode: None,
            resource_field_ref: None,
        };
        let fields = FieldContext {
            pod_ip: Some("10.244.0.4".into()),
            ..Default::default()
        };
        let files = downward_files(
            "podinfo",
            &pod,
            &[
                item("name", "metadata.name"),
                item("labels", "metadata.labels"),
                item("ip", "status.podIP"),
            ],
            0o644,
            &fields,
        )
        .unwrap();
        let text = |i: usize| String::from_utf8(files[i].data.clone()).unwrap();
        assert_eq!(text(0), "bus-0");
        assert_eq!(text(1), "a=\"1\"\nb=\"2\"\n");
        assert_eq!(text(2), "10.244.0.4");
    }

    #[test]
    fn files_are_written_with_their_modes_and_stale_ones_removed() {
        let dir = std::env::temp_dir().join(format!("devcluster-vol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale"), "x").unwrap();
        let files = key_files("s", "secret", "c", data(), None, false, 0o400).unwrap();
        write_files(&dir, &files).unwrap();
        assert!(!dir.join("stale").exists());
        let mode = std::fs::metadata(dir.join(".erlang.cookie"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert_eq!(
            std::fs::read(dir.join(".erlang.cookie")).unwrap(),
            b"COOKIE"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounts_resolve_sub_paths_and_make_agent_files_read_only() {
        let base = std::env::temp_dir().join(format!("devcluster-mnt-{}", std::process::id()));
        let paths = PodPaths {
            dir: base.join("pod"),
            state_dir: base.clone(),
        };
        let volumes = BTreeMap::from([
            (
                "config".to_string(),
                Materialised::Files(base.join("config")),
            ),
            ("data".to_string(), Materialised::Dir(base.join("data"))),
        ]);
        std::fs::create_dir_all(base.join("config")).unwrap();
        std::fs::write(base.join("config/emqx.conf"), "x").unwrap();
        let mut env = Env::new();
        env.set("POD_NAME", "bus-0");
        let container = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "config".into(),
                    mount_path: "/opt/emqx/etc/emqx.conf".into(),
                    sub_path: Some("emqx.conf".into()),
                    ..Default::default()
                },
                VolumeMount {
                    name: "data".into(),
                    mount_path: "/var/lib/data".into(),
                    sub_path_expr: Some("$(POD_NAME)".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mounts = container_mounts(&container, &volumes, &paths, &env).unwrap();
        assert_eq!(mounts[0].target, "/tmp");
        assert_eq!(mounts[1].source, base.join("config/emqx.conf"));
        assert!(mounts[1].read_only);
        assert_eq!(mounts[2].source, base.join("data/bus-0"));
        assert!(base.join("data/bus-0").is_dir());
        assert!(!mounts[2].read_only);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
