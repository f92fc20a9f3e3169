//! `genesis_registry._core`: the extension module. Registers the classes and functions
//! of the bindings (see `rust/py/`); the logic lives in `rust/core`.

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<py::instance::PyServiceInstance>()?;
    m.add_class::<py::connector::PyConnector>()?;
    m.add_class::<py::registry::PyRegistry>()?;
    m.add_class::<py::watch::PyWatch>()?;
    m.add_function(wrap_pyfunction!(py::registry::effective_namespace, m)?)?;
    m.add_function(wrap_pyfunction!(py::instance::endpoint_target, m)?)?;
    m.add_function(wrap_pyfunction!(py::runtime::_reset_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(py::runtime::_shutdown_runtime, m)?)?;
    Ok(())
}
