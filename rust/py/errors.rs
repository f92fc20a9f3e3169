//! The one place core errors become Python exceptions. The exception classes live in
//! `genesis_registry/errors.py` (so they can also derive from ValueError, LookupError...),
//! which hands them over once, at its import, through `_register_errors`: one named
//! parameter per class, so a class renamed or missing there fails that import instead of
//! the first raise. Errors that came from etcd with a gRPC status carry it as `code`
//! (a `grpc.StatusCode`, from the table errors.py passes along).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use genesis_registry_core::Error;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

/// The classes of `genesis_registry.errors`, one per kind of core error.
struct Classes {
    registry_error: Py<PyType>,
    invalid_config: Py<PyType>,
    invalid_instance: Py<PyType>,
    invalid_ttl: Py<PyType>,
    already_registered: Py<PyType>,
    not_found: Py<PyType>,
    closed: Py<PyType>,
    lease_expired: Py<PyType>,
    unavailable: Py<PyType>,
    authentication: Py<PyType>,
    /// gRPC status code number -> `grpc.StatusCode`.
    status_codes: Py<PyDict>,
}

/// Replaced, not set once: reloading `genesis_registry.errors` makes new classes, and
/// the new ones are what `except` clauses then name.
static CLASSES: ArcSwapOption<Classes> = ArcSwapOption::const_empty();

/// Called by `genesis_registry/errors.py` at import: the class to raise for each kind of
/// core error, and the `grpc.StatusCode` of each status code number.
#[pyfunction]
#[pyo3(signature = (*, registry_error, invalid_config, invalid_instance, invalid_ttl, already_registered,
                    not_found, closed, lease_expired, unavailable, authentication, status_codes))]
#[allow(clippy::too_many_arguments)]
pub fn _register_errors(
    registry_error: Bound<'_, PyType>,
    invalid_config: Bound<'_, PyType>,
    invalid_instance: Bound<'_, PyType>,
    invalid_ttl: Bound<'_, PyType>,
    already_registered: Bound<'_, PyType>,
    not_found: Bound<'_, PyType>,
    closed: Bound<'_, PyType>,
    lease_expired: Bound<'_, PyType>,
    unavailable: Bound<'_, PyType>,
    authentication: Bound<'_, PyType>,
    status_codes: Bound<'_, PyDict>,
) -> PyResult<()> {
    let subclasses = [
        &invalid_config,
        &invalid_instance,
        &invalid_ttl,
        &already_registered,
        &not_found,
        &closed,
        &lease_expired,
        &unavailable,
        &authentication,
    ];
    for class in subclasses {
        if !class.is_subclass(&registry_error)? {
            return Err(PyTypeError::new_err(format!("{class} does not derive from {registry_error}")));
        }
    }
    CLASSES.store(Some(Arc::new(Classes {
        registry_error: registry_error.unbind(),
        invalid_config: invalid_config.unbind(),
        invalid_instance: invalid_instance.unbind(),
        invalid_ttl: invalid_ttl.unbind(),
        already_registered: already_registered.unbind(),
        not_found: not_found.unbind(),
        closed: closed.unbind(),
        lease_expired: lease_expired.unbind(),
        unavailable: unavailable.unbind(),
        authentication: authentication.unbind(),
        status_codes: status_codes.unbind(),
    })));
    Ok(())
}

/// The registered classes; importing `genesis_registry.errors` registers them, for a
/// caller that imported `_core` alone.
fn classes(py: Python<'_>) -> PyResult<Arc<Classes>> {
    if let Some(classes) = CLASSES.load_full() {
        return Ok(classes);
    }
    py.import("genesis_registry.errors")?;
    CLASSES.load_full().ok_or_else(|| {
        PyRuntimeError::new_err("genesis_registry.errors did not register its exception classes")
    })
}

impl Classes {
    fn of(&self, error: &Error) -> &Py<PyType> {
        match error {
            Error::InvalidConfig(_) => &self.invalid_config,
            Error::InvalidInstance(_) => &self.invalid_instance,
            Error::InvalidTtl(_) => &self.invalid_ttl,
            Error::AlreadyRegistered(_) => &self.already_registered,
            Error::NotFound(_) => &self.not_found,
            Error::Closed(_) => &self.closed,
            Error::LeaseExpired(_) => &self.lease_expired,
            Error::Unavailable(_) => &self.unavailable,
            Error::Authentication(_) | Error::CertificateRefused(_) => &self.authentication,
            Error::Etcd(_) | Error::XdsServer(_) => &self.registry_error,
        }
    }
}

/// The Python exception for a core error.
pub fn to_py_err(error: Error) -> PyErr {
    Python::attach(|py| error_to_py(py, error))
}

/// The Python exception for a core error, with the GIL already held.
pub fn error_to_py(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    let classes = match classes(py) {
        Ok(classes) => classes,
        Err(import_error) => {
            return PyRuntimeError::new_err(format!(
                "{message} (and genesis_registry.errors could not be loaded: {import_error})"
            ))
        }
    };
    let err = PyErr::from_type(classes.of(&error).bind(py).clone(), message);
    if let Some(code) = error.code() {
        let status = classes.status_codes.bind(py).get_item(code as i32);
        if let Ok(Some(status)) = status {
            // Setting an attribute on a fresh exception instance cannot fail.
            let _ = err.value(py).setattr("code", status);
        }
    }
    err
}

/// A `RegistryClosedError` with this message.
pub fn closed_error(message: String) -> PyErr {
    Python::attach(|py| match classes(py) {
        Ok(classes) => PyErr::from_type(classes.closed.bind(py).clone(), message),
        Err(import_error) => PyRuntimeError::new_err(format!("{message} ({import_error})")),
    })
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
