//! The process's tokio runtime: built on first use, replaced in a forked child (tokio's
//! threads do not survive `fork()`), shut down at interpreter exit. Also the two ways
//! Python waits on Rust: blocking (GIL released, Ctrl-C honoured) and awaitable.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use pyo3_async_runtimes::generic::{ContextExt, JoinError, Runtime as AsyncRuntime};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::OnceCell;

use genesis_registry_core::sync::lock;

use crate::py::errors::closed_error;

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);
/// Bumped in a forked child: objects from before the fork hold a dead runtime's handles.
static PROCESS_GENERATION: AtomicU64 = AtomicU64::new(0);

/// How often a blocked call wakes to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

fn worker_threads() -> usize {
    std::env::var("GENESIS_REGISTRY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

pub fn handle() -> Handle {
    let mut runtime = lock(&RUNTIME);
    let runtime = runtime.get_or_insert_with(|| {
        Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads())
                .thread_name("genesis-registry")
                .enable_all()
                .build()
                .expect("cannot start the tokio runtime"),
        )
    });
    runtime.handle().clone()
}

pub fn generation() -> u64 {
    PROCESS_GENERATION.load(Ordering::Acquire)
}

/// Fails for objects created in the parent of a forked process.
pub fn ensure_same_process(created_in: u64, what: &str) -> PyResult<()> {
    if created_in == generation() {
        Ok(())
    } else {
        Err(closed_error(format!(
            "this {what} was created before os.fork() and cannot be used in the child process; create a new one"
        )))
    }
}

/// Called in a forked child: forget the parent's runtime (its threads do not exist
/// here, so dropping it would wait forever) and start afresh on next use.
#[pyfunction]
pub fn _reset_after_fork() {
    let mut runtime = lock(&RUNTIME);
    if let Some(old) = runtime.take() {
        std::mem::forget(old);
    }
    PROCESS_GENERATION.fetch_add(1, Ordering::AcqRel);
    genesis_registry_core::xds::host::forget_after_fork();
}

/// Stops the runtime's threads, waiting at most `timeout` seconds for running tasks.
/// Called at interpreter exit after every registry and connector was closed.
#[pyfunction]
pub fn _shutdown_runtime(py: Python<'_>, timeout: f64) {
    let taken = lock(&RUNTIME).take();
    if let Some(runtime) = taken {
        match Arc::try_unwrap(runtime) {
            Ok(runtime) => py.detach(|| runtime.shutdown_timeout(Duration::from_secs_f64(timeout.max(0.0)))),
            Err(shared) => std::mem::forget(shared),
        }
    }
}

/// Runs `fut` to completion on the calling thread (inside the runtime's context), with
/// the GIL released. Every 100 ms it lets Python run pending signal handlers; if one
/// raises (KeyboardInterrupt) the future is dropped and that error returned, so `fut`
/// must be cancel-safe: registrations and deregistrations hand their work to a task of
/// their own, watches only wait without taking an event.
pub fn block_on<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let handle = handle();
    let mut fut = std::pin::pin!(fut);
    loop {
        let finished = py.detach(|| {
            handle.block_on(async { tokio::time::timeout(SIGNAL_CHECK_INTERVAL, fut.as_mut()).await.ok() })
        });
        match finished {
            Some(value) => return Ok(value),
            None => py.check_signals()?,
        }
    }
}

/// Turns a core future into an asyncio awaitable running on our runtime. The result
/// (value or exception) becomes a Python object only after the future, with the GIL,
/// off the runtime's worker threads.
pub fn into_awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = genesis_registry_core::Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<GenesisRuntime, _, Outcome<T>>(py, async move {
        Ok(Outcome(fut.await))
    })
}

/// A core result on its way to Python.
pub struct Outcome<T>(genesis_registry_core::Result<T>);

impl<'py, T: IntoPyObject<'py>> IntoPyObject<'py> for Outcome<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        match self.0 {
            Ok(value) => value.into_bound_py_any(py),
            Err(error) => Err(crate::py::errors::error_to_py(py, error)),
        }
    }
}

/// pyo3-async-runtimes glue for our (fork-resettable) runtime.
pub struct GenesisRuntime;

pub struct TaskJoinError(tokio::task::JoinError);

impl JoinError for TaskJoinError {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }
    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        self.0.into_panic()
    }
}

type TaskJoinHandle = Pin<Box<dyn Future<Output = Result<(), TaskJoinError>> + Send>>;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl AsyncRuntime for GenesisRuntime {
    type JoinError = TaskJoinError;
    type JoinHandle = TaskJoinHandle;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = handle().spawn(fut);
        Box::pin(async move { task.await.map_err(TaskJoinError) })
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        let task = handle().spawn_blocking(f);
        Box::pin(async move { task.await.map_err(TaskJoinError) })
    }
}

impl ContextExt for GenesisRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new_with(Some(locals));
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(|cell| cell.get().cloned()).ok().flatten()
    }
}
