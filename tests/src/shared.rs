//! One control plane shared by all tests of a test binary.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, Once};

use anyhow::{anyhow, Result};
use tokio::sync::OnceCell;

use crate::control_plane::{ControlPlane, ControlPlaneOptions};

/// A control plane started by the first test that asks for it and shared by the others of the same
/// test binary; it stops (and its state directory goes) when the test process exits. A failed start
/// is remembered: every test then fails at once with the same message.
///
/// ```no_run
/// use mooring_tests::{ControlPlaneOptions, SharedControlPlane};
/// static CP: SharedControlPlane = SharedControlPlane::new(ControlPlaneOptions::default);
///
/// #[tokio::test]
/// async fn something() -> anyhow::Result<()> {
///     let client = CP.get().await?.client().await?; // one client per test (per runtime)
///     # drop(client);
///     Ok(())
/// }
/// ```
///
/// Tests with `#[tokio::test]` each run on their own runtime: take a fresh
/// [`ControlPlane::client`] in every test; never keep a client in a static.
pub struct SharedControlPlane {
    options: fn() -> ControlPlaneOptions,
    cell: OnceCell<Result<&'static ControlPlane, String>>,
}

type StartFuture = Pin<Box<dyn Future<Output = Result<&'static ControlPlane, String>> + Send>>;

impl SharedControlPlane {
    /// A shared control plane started with `options()` on first use.
    pub const fn new(options: fn() -> ControlPlaneOptions) -> Self {
        Self {
            options,
            cell: OnceCell::const_new(),
        }
    }

    /// The control plane, starting it on the first call.
    pub async fn get(&'static self) -> Result<&'static ControlPlane> {
        let options = self.options;
        let start = move || -> StartFuture {
            Box::pin(async move {
                match ControlPlane::start(options()).await {
                    Ok(cp) => {
                        let cp: &'static ControlPlane = Box::leak(Box::new(cp));
                        register_for_exit(cp);
                        Ok(cp)
                    }
                    Err(e) => Err(format!("{e:#}")),
                }
            })
        };
        match self.cell.get_or_init(start).await {
            Ok(cp) => Ok(cp),
            Err(msg) => Err(anyhow!("the shared control plane failed to start: {msg}")),
        }
    }
}

static AT_EXIT: Mutex<Vec<&'static ControlPlane>> = Mutex::new(Vec::new());

fn register_for_exit(cp: &'static ControlPlane) {
    static REGISTER: Once = Once::new();
    AT_EXIT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(cp);
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` with no captured state. If registration fails
        // the children still die with the process (parent-death signal); only the state directory
        // stays behind.
        unsafe {
            libc::atexit(shutdown_shared);
        }
    });
}

extern "C" fn shutdown_shared() {
    let planes: Vec<&'static ControlPlane> = AT_EXIT
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for cp in planes {
        cp.shutdown();
    }
}
