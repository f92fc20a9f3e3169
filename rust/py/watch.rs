//! `WatchCore`: one subscriber's events, read blocking (sync iterator) or awaited.

use std::sync::Arc;
use std::time::Duration;

use genesis_registry_core::{Event, Watch};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;

use crate::py::connector::seconds;
use crate::py::instance::ServiceInstance;
use crate::py::runtime;

/// (event type, instance) as handed to Python.
pub(crate) type PyEvent = (&'static str, ServiceInstance);

fn to_py_event(event: Event) -> PyEvent {
    (event.kind.as_str(), ServiceInstance::wrap(event.instance))
}

#[pyclass(frozen, module = "genesis_registry._core")]
pub struct WatchCore {
    pub(crate) subscriber: Arc<Watch>,
    pub(crate) created_in: u64,
}

impl Drop for WatchCore {
    /// A watch dropped without `close()` (an `async for` left with `break`) stops
    /// receiving events, instead of queueing them forever.
    fn drop(&mut self) {
        self.subscriber.close();
    }
}

#[pymethods]
impl WatchCore {
    /// The next event, waiting up to `timeout` seconds (forever when None); None once
    /// the watch is closed. Raises TimeoutError when the time runs out.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyEvent>> {
        runtime::ensure_same_process(self.created_in, "watch")?;
        let limit = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        loop {
            // Events are taken here, never inside the waiting future, so an interrupted
            // wait cannot lose one.
            if let Some(event) = self.subscriber.try_next() {
                return Ok(Some(to_py_event(event)));
            }
            if self.subscriber.is_closed() {
                return Ok(None);
            }
            let subscriber = Arc::clone(&self.subscriber);
            let woke = runtime::block_on(py, async move {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, subscriber.ready()).await.is_ok(),
                    None => {
                        subscriber.ready().await;
                        true
                    }
                }
            })?;
            if !woke {
                return Err(PyTimeoutError::new_err(format!(
                    "no event within {:.3}s",
                    limit.unwrap_or(Duration::ZERO).as_secs_f64()
                )));
            }
        }
    }

    /// The next event if one is queued, else None; never blocks.
    fn try_next(&self) -> Option<PyEvent> {
        self.subscriber.try_next().map(to_py_event)
    }

    /// Awaitable that completes when an event may be ready (or the watch closed); take
    /// it with `try_next()`. Cancelling the wait loses nothing.
    fn wait_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::ensure_same_process(self.created_in, "watch")?;
        let subscriber = Arc::clone(&self.subscriber);
        runtime::into_awaitable(py, async move {
            subscriber.ready().await;
            Ok(())
        })
    }

    fn close(&self) {
        self.subscriber.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.subscriber.is_closed()
    }

    /// Times this watch fell behind and was resynced from the current snapshot.
    #[getter]
    fn overflows(&self) -> u64 {
        self.subscriber.overflows()
    }
}
