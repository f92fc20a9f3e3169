//! `genesis_registry._core`: the extension module. Registers the classes and functions
//! of the bindings (see `rust/py/`); the logic lives in `rust/core`.

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<py::instance::ServiceInstance>()?;
    m.add_class::<py::connector::EtcdConnectorCore>()?;
    m.add_class::<py::registry::RegistryCore>()?;
    m.add_class::<py::watch::WatchCore>()?;
    m.add_function(wrap_pyfunction!(py::registry::effective_namespace, m)?)?;
    m.add_function(wrap_pyfunction!(py::registry::lease_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(py::instance::endpoint_target, m)?)?;
    m.add_function(wrap_pyfunction!(py::errors::_register_errors, m)?)?;
    m.add_function(wrap_pyfunction!(py::native::xds_server, m)?)?;
    m.add_function(wrap_pyfunction!(py::runtime::_reset_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(py::runtime::_shutdown_runtime, m)?)?;
    Ok(())
}
