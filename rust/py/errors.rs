//! The one place core errors become Python exceptions. The exception classes live in
//! `genesis_registry/errors.py` (so they can also derive from ValueError, LookupError...).

use genesis_registry_core::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyType};

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn exception(py: Python<'_>, class_name: &str, message: String) -> PyErr {
    let module =
        ERRORS_MODULE.get_or_try_init(py, || py.import("genesis_registry.errors").map(Bound::unbind));
    let class =
        module.and_then(|m| m.bind(py).getattr(class_name)).and_then(|c| Ok(c.cast_into::<PyType>()?));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        Err(import_error) => PyRuntimeError::new_err(format!(
            "{message} (and genesis_registry.errors.{class_name} could not be loaded: {import_error})"
        )),
    }
}

fn class_of(error: &Error) -> &'static str {
    match error {
        Error::InvalidConfig(_) => "InvalidConfigError",
        Error::InvalidInstance(_) => "InvalidServiceInstanceError",
        Error::InvalidTtl(_) => "InvalidTTLError",
        Error::AlreadyRegistered(_) => "ServiceAlreadyRegisteredError",
        Error::NotFound(_) => "ServiceNotFoundError",
        Error::Closed(_) => "RegistryClosedError",
        Error::LeaseExpired(_) => "LeaseExpiredError",
        Error::Unavailable(_) => "EtcdUnavailableError",
        Error::Authentication(_) | Error::CertificateRefused(_) => "AuthenticationError",
        Error::Etcd(_) => "RegistryError",
    }
}

/// The Python exception for a core error.
pub fn to_py_err(error: Error) -> PyErr {
    Python::attach(|py| error_to_py(py, error))
}

/// The Python exception for a core error, with the GIL already held.
pub fn error_to_py(py: Python<'_>, error: Error) -> PyErr {
    exception(py, class_of(&error), error.to_string())
}

/// A `RegistryClosedError` with this message.
pub fn closed_error(message: String) -> PyErr {
    Python::attach(|py| exception(py, "RegistryClosedError", message))
}

/// An `InvalidConfigError` with this message.
pub fn config_error(message: String) -> PyErr {
    to_py_err(Error::InvalidConfig(message))
}

/// Core results into Python results.
pub trait IntoPyResult<T> {
    fn into_py_result(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for genesis_registry_core::Result<T> {
    fn into_py_result(self) -> PyResult<T> {
        self.map_err(to_py_err)
    }
}
