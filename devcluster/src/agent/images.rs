//! The image mapping (`devcluster/images.yaml`): which local program runs a container image
//! (pure, apart from [`ImageMapping::load`]). The file's header documents the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The environment variable that points the agent at another mapping file.
pub const IMAGES_FILE_ENV: &str = "MOORING_DEVCLUSTER_IMAGES";

/// The variable the mapping file uses for the directory holding the `mooring` binary.
pub const BIN_DIR_VAR: &str = "MOORING_BIN_DIR";

/// The waiting reason of a container whose image has no usable mapping.
pub const REASON_NOT_MAPPED: &str = "ImageNotMapped";

/// The waiting reason of a container whose mapped program is not installed.
pub const REASON_NOT_INSTALLED: &str = "ImageNotInstalled";

/// The mapping shipped with the repository (used when the file cannot be found on disk).
const BUILTIN: &str = include_str!("../../images.yaml");

/// The PATH every container starts from (the mapping's `path` goes in front).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors reading the mapping file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid mapping.
    #[error("{path} is not a valid image mapping: {source}")]
    Parse {
        /// The file (or `built-in`).
        path: String,
        /// Why.
        source: serde_yaml::Error,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    images: Vec<Rule>,
}

/// One rule of the mapping file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A label for people.
    pub name: String,
    /// The repositories this rule covers.
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    /// The image's ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's CMD.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Directories in front of [`DEFAULT_PATH`].
    #[serde(default)]
    pub path: Vec<String>,
    /// The image's ENV.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files that must exist.
    #[serde(default)]
    pub requires: Vec<String>,
    /// How to install what `requires` names.
    #[serde(default)]
    pub install: Option<String>,
    /// Why this image can never run here.
    #[serde(default)]
    pub unrunnable: Option<String>,
}

/// The loaded mapping.
#[derive(Clone, Debug)]
pub struct ImageMapping {
    source: String,
    rules: Vec<Rule>,
}

/// What an image runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The rule's name.
    pub name: String,
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// The container's default PATH.
    pub path: String,
    /// The image's ENV (without PATH).
    pub env: Vec<(String, String)>,
}

/// Why an image cannot run: the container's waiting `reason` and `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotRunnable {
    /// [`REASON_NOT_MAPPED`] or [`REASON_NOT_INSTALLED`].
    pub reason: &'static str,
    /// For people: what and why, naming the mapping file.
    pub message: String,
}

/// Errors building a container's command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Neither the container nor the image says what to run.
    #[error("no command specified: the container has no command and the image mapping no entrypoint or cmd")]
    Empty,
}

/// The repository of an image reference, without registry, tag, digest and `library/`.
pub fn repository(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let mut parts: Vec<&str> = without_digest.split('/').collect();
    if let Some(last) = parts.last_mut() {
        if let Some((name, _tag)) = last.split_once(':') {
            *last = name;
        }
    }
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    if parts.len() > 1 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/").to_ascii_lowercase()
}

fn matches(pattern: &str, repo: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*/") {
        Some(last) => repo.rsplit('/').next() == Some(last),
        None => pattern == repo || repository(&pattern) == repo,
    }
}

/// Replaces `${NAME}` with `vars(NAME)`; `Err(NAME)` for the first unset one.
fn substitute(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&vars(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ImageMapping {
    /// Parses mapping text; `source` names it in messages.
    pub fn parse(text: &str, source: impl Into<String>) -> Result<Self, ImageError> {
        let source = source.into();
        let file: MappingFile = serde_yaml::from_str(text).map_err(|e| ImageError::Parse {
            path: source.clone(),
            source: e,
        })?;
        Ok(Self {
            source,
            rules: file.images,
        })
    }

    /// Where the mapping comes from: `$MOORING_DEVCLUSTER_IMAGES`, else the repository's
    /// `devcluster/images.yaml` when it exists, else the copy built into the binary.
    pub fn load() -> Result<Self, ImageError> {
        let path = std::env::var_os(IMAGES_FILE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("images.yaml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, path.display().to_string()),
            Err(e) if std::env::var_os(IMAGES_FILE_ENV).is_some() => {
                Err(ImageError::Read { path, source: e })
            }
            Err(_) => Self::parse(BUILTIN, "devcluster/images.yaml (built in)"),
        }
    }

    /// The file the mapping was read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What `image` runs as. `vars` resolves `${NAME}`; `exists` checks `requires`.
    pub fn resolve(
        &self,
        image: &str,
        vars: &dyn Fn(&str) -> Option<String>,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<ResolvedImage, NotRunnable> {
        let repo = repository(image);
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.matches.iter().any(|m| matches(m, &repo)))
        else {
            let known: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
            return Err(NotRunnable {
                reason: REASON_NOT_MAPPED,
                message: format!(
                    "image {image:?} has no mapping in {}: containers run as local programs here, \
                     and the mapping knows {}",
                    self.source,
                    known.join(", ")
                ),
            });
        };
        if let Some(why) = &rule.unrunnable {
            return Err(NotRunnable {
                reason: REASON_NOT_MAPPED,
                message: format!("{why} (image {image:?}, see {})", self.source),
            });
        }
        let sub = |t: &str| {
            substitute(t, vars).map_err(|var| NotRunnable {
                reason: REASON_NOT_MAPPED,
                message: format!(
                    "image {image:?} maps to a program under ${{{var}}}, which is not set \
                     (see {})",
                    self.source
                ),
            })
        };
        let sub_all =
            |items: &[String]| items.iter().map(|t| sub(t)).collect::<Result<Vec<_>, _>>();
        for required in sub_all(&rule.requires)? {
            if !exists(&required) {
                let hint = rule
                    .install
                    .as_deref()
                    .map(|i| format!(": {i}"))
                    .unwrap_or_default();
                return Err(NotRunnable {
                    reason: REASON_NOT_INSTALLED,
                    message: format!(
                        "image {image:?} runs {required} (see {}), which is not installed{hint}",
                        self.source
                    ),
                });
            }
        }
        let mut path = sub_all(&rule.path)?;
        path.push(DEFAULT_PATH.to_string());
        let env = rule
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), sub(v)?)))
            .collect::<Result<Vec<_>, NotRunnable>>()?;
        Ok(ResolvedImage {
            name: rule.name.clone(),
            entrypoint: sub_all(&rule.entrypoint)?,
            cmd: sub_all(&rule.cmd)?,
            path: path.join(":"),
            env,
        })
    }
}

/// The argv a container runs, as a container runtime builds it: `command` replaces the
/// ENTRYPOINT, `args` the CMD (a `command` without `args` drops the CMD too).
pub fn argv(
    image: &ResolvedImage,
    command: &[String],
    args: &[String],
) -> Result<Vec<String>, CommandError> {
    let mut out: Vec<String> = if command.is_empty() {
        image.entrypoint.clone()
    } else {
        command.to_vec()
    };
    if !args.is_empty() {
        out.extend(args.iter().cloned());
    } else if command.is_empty() {
        out.extend(image.cmd.iter().cloned());
    }
    if out.is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(out)
}

/// The default for `${MOORING_BIN_DIR}`: the directory of the running executable.
pub fn default_bin_dir() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.display().to_string())
}

/// `${NAME}` lookup for the mapping: the process environment, with [`default_bin_dir`] for
/// `MOORING_BIN_DIR`.
pub fn process_vars(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            if name == BIN_DIR_VAR {
                default_bin_dir()
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> ImageMapping {
        ImageMapping::parse(BUILTIN, "devcluster/images.yaml").unwrap()
    }

    fn vars(name: &str) -> Option<String> {
        (name == BIN_DIR_VAR).then(|| "/target/debug".to_string())
    }

    fn all_exist(_: &str) -> bool {
        true
    }

    #[test]
    fn repositories_drop_registry_tag_digest_and_library() {
        let cases = [
            ("rabbitmq", "rabbitmq"),
            ("rabbitmq:3.13-management", "rabbitmq"),
            ("library/rabbitmq:3.13", "rabbitmq"),
            ("docker.io/rabbitmq:3.13", "rabbitmq"),
            ("docker.io/library/rabbitmq:3.13", "rabbitmq"),
            ("emqx/emqx:5.8.9", "emqx/emqx"),
            ("ghcr.io/acme/mooring:dev", "acme/mooring"),
            ("localhost:5000/mooring:1", "mooring"),
            ("localhost/mooring", "mooring"),
            ("haproxy@sha256:abcd", "haproxy"),
            ("registry:5000/haproxy:2.8@sha256:abcd", "haproxy"),
        ];
        for (image, repo) in cases {
            assert_eq!(repository(image), repo, "{image}");
        }
    }

    #[test]
    fn rabbitmq_runs_the_debian_scripts_not_the_sbin_wrappers() {
        for image in [
            "rabbitmq:3.13-management",
            "docker.io/library/rabbitmq",
            "library/rabbitmq:3.10",
        ] {
            let r = shipped().resolve(image, &vars, &all_exist).unwrap();
            assert_eq!(r.entrypoint, ["/usr/lib/rabbitmq/bin/rabbitmq-server"]);
            assert!(r.path.starts_with("/usr/lib/rabbitmq/bin:"), "{}", r.path);
            assert!(!r.path.contains("/usr/sbin:/usr/lib/rabbitmq"));
            assert!(r.env.contains(&("RABBITMQ_LOGS".into(), "-".into())));
            // The operator's command `rabbitmq-server` resolves through PATH to the same script.
            let argv = argv(&r, &["rabbitmq-server".into()], &[]).unwrap();
            assert_eq!(argv, ["rabbitmq-server"]);
        }
    }

    #[test]
    fn mooring_images_run_the_built_binary() {
        for image in ["mooring:dev", "ghcr.io/acme/mooring:0.1.0"] {
            let r = shipped().resolve(image, &vars, &all_exist).unwrap();
            assert_eq!(r.entrypoint, ["/target/debug/mooring"]);
        }
        let unset = |_: &str| None;
        let err = shipped()
            .resolve("mooring", &unset, &all_exist)
            .unwrap_err();
        assert_eq!(err.reason, REASON_NOT_MAPPED);
        assert!(
            err.message.contains("${MOORING_BIN_DIR}"),
            "{}",
            err.message
        );
    }

    #[test]
    fn emqx_and_unknown_images_are_not_mapped_and_say_why() {
        let err = shipped()
            .resolve("emqx/emqx:5.8.9", &vars, &all_exist)
            .unwrap_err();
        assert_eq!(err.reason, REASON_NOT_MAPPED);
        assert!(
            err.message
                .starts_with("EMQX cannot run on this machine: no EMQX package exists for it"),
            "{}",
            err.message
        );
        let err = shipped()
            .resolve("nginx:1.27", &vars, &all_exist)
            .unwrap_err();
        assert_eq!(err.reason, REASON_NOT_MAPPED);
        assert!(
            err.message.contains("devcluster/images.yaml"),
            "{}",
            err.message
        );
        assert!(err.message.contains("\"nginx:1.27\""), "{}", err.message);
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let none_exist = |_: &str| false;
        let err = shipped()
            .resolve("haproxy:2.8", &vars, &none_exist)
            .unwrap_err();
        assert_eq!(err.reason, REASON_NOT_INSTALLED);
        assert!(
            err.message.contains("apt-get install -y haproxy"),
            "{}",
            err.message
        );
    }

    #[test]
    fn argv_follows_entrypoint_and_cmd_semantics() {
        let image = ResolvedImage {
            name: "x".into(),
            entrypoint: vec!["/usr/sbin/haproxy".into()],
            cmd: vec!["-f".into(), "/etc/haproxy.cfg".into()],
            path: DEFAULT_PATH.into(),
            env: vec![],
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            argv(&image, &[], &[]).unwrap(),
            s(&["/usr/sbin/haproxy", "-f", "/etc/haproxy.cfg"])
        );
        assert_eq!(
            argv(&image, &[], &s(&["-c"])).unwrap(),
            s(&["/usr/sbin/haproxy", "-c"])
        );
        assert_eq!(argv(&image, &s(&["sh"]), &[]).unwrap(), s(&["sh"]));
        assert_eq!(
            argv(&image, &s(&["sh"]), &s(&["-c", "true"])).unwrap(),
            s(&["sh", "-c", "true"])
        );
        let empty = ResolvedImage {
            entrypoint: vec![],
            cmd: vec![],
            ..image
        };
        assert_eq!(argv(&empty, &[], &[]), Err(CommandError::Empty));
    }

    #[test]
    fn substitution_reports_the_unset_variable() {
        let v = |n: &str| (n == "A").then(|| "a".to_string());
        assert_eq!(substitute("${A}/x", &v), Ok("a/x".into()));
        assert_eq!(substitute("${B}/x", &v), Err("B".into()));
        assert_eq!(substitute("${A", &v), Ok("${A".into()));
        assert_eq!(substitute("plain", &v), Ok("plain".into()));
    }
}
