//! `EtcdConnectorCore`: the connector for Python, plus the drain its log thread reads.

use std::time::Duration;

use genesis_registry_core::log_sink::Drained;
use genesis_registry_core::{EtcdConfig, EtcdConnector, Level, TlsConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::py::errors::{config_error, IntoPyResult};
use crate::py::runtime;

pub(crate) fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| config_error(format!("{name} must be a non-negative number of seconds (got {value})")))
}

/// One log record for Python: (level name, origin, message, fields).
type PyLogRecord = (&'static str, u64, String, Vec<(&'static str, String)>);

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warning => "WARNING",
        Level::Error => "ERROR",
    }
}

#[pyclass(frozen, module = "genesis_registry._core")]
pub struct EtcdConnectorCore {
    pub(crate) core: EtcdConnector,
    pub(crate) created_in: u64,
}

impl EtcdConnectorCore {
    pub(crate) fn check(&self) -> PyResult<&EtcdConnector> {
        runtime::ensure_same_process(self.created_in, "EtcdConnector")?;
        Ok(&self.core)
    }
}

#[pymethods]
impl EtcdConnectorCore {
    #[new]
    #[pyo3(signature = (endpoints, dial_timeout, request_timeout, username=None, password=None,
                        tls_ca=None, tls_cert=None, tls_key=None, tls_server_name=None, tls=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        endpoints: Vec<String>,
        dial_timeout: f64,
        request_timeout: f64,
        username: Option<String>,
        password: Option<String>,
        tls_ca: Option<Vec<u8>>,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        tls_server_name: Option<String>,
        tls: bool,
    ) -> PyResult<Self> {
        let tls = tls.then_some(TlsConfig {
            ca_pem: tls_ca,
            cert_pem: tls_cert,
            key_pem: tls_key,
            server_name: tls_server_name,
        });
        let config = EtcdConfig {
            endpoints,
            dial_timeout: seconds("dial_timeout", dial_timeout)?,
            request_timeout: seconds("request_timeout", request_timeout)?,
            username,
            password,
            tls,
        };
        Ok(Self { core: EtcdConnector::new(config).into_py_result()?, created_in: runtime::generation() })
    }

    /// Blocks until the cluster answers or the dial timeout passes.
    fn connect(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.check()?.clone();
        runtime::block_on(py, async move { core.connect().await })?.into_py_result()
    }

    fn connect_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move { core.connect().await })
    }

    /// Idempotent. In a forked child it does nothing: the parent owns the connection.
    fn close(&self) {
        if self.created_in == runtime::generation() {
            self.core.close();
        }
    }

    #[getter]
    fn endpoints(&self) -> Vec<String> {
        self.core.endpoints().to_vec()
    }

    #[getter]
    fn connected(&self) -> bool {
        self.core.is_connected()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Waits up to `timeout` seconds for log records. Returns a list (empty when idle),
    /// or None once the connector is closed and every record was handed out.
    fn drain_logs(&self, py: Python<'_>, timeout: f64) -> Option<Vec<PyLogRecord>> {
        let sink = self.core.log_sink().clone();
        let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
        match py.detach(|| sink.drain(timeout, 256)) {
            Drained::Records(records) => Some(
                records.into_iter().map(|r| (level_name(r.level), r.origin, r.message, r.fields)).collect(),
            ),
            Drained::Idle => Some(Vec::new()),
            Drained::Closed => None,
        }
    }

    /// The watch hub's counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.core.watch_stats().snapshot() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}
