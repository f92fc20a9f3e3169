//! `ServiceInstance` for Python: an immutable view over the core's instance, whose
//! `metadata` (a read-only mapping) and `endpoints` (a tuple) are built on first access.

use std::collections::BTreeMap;
use std::sync::Arc;

use genesis_registry_core as core;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyMapping, PyString, PyTuple};

use crate::py::errors::{to_py_err, IntoPyResult};
use genesis_registry_core::Error;

static MAPPING_PROXY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// One instance of a service: what is stored at `<namespace>/<name>/<id>`.
#[pyclass(frozen, module = "genesis_registry")]
pub struct ServiceInstance {
    pub(crate) inner: Arc<core::ServiceInstance>,
    metadata: PyOnceLock<Py<PyAny>>,
    endpoints: PyOnceLock<Py<PyTuple>>,
}

impl ServiceInstance {
    pub fn wrap(inner: Arc<core::ServiceInstance>) -> Self {
        Self { inner, metadata: PyOnceLock::new(), endpoints: PyOnceLock::new() }
    }
}

fn extract_metadata(value: Option<&Bound<'_, PyAny>>) -> PyResult<BTreeMap<String, String>> {
    let Some(value) = value.filter(|v| !v.is_none()) else { return Ok(BTreeMap::new()) };
    let mapping = value.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(format!("metadata must be a mapping of str to str, not {}", type_name(value)))
    })?;
    let mut metadata = BTreeMap::new();
    for item in mapping.items()?.iter() {
        let (key, val): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        // Through string_arg: a lone surrogate is bad text (named as such), not a wrong type.
        let key = string_arg("metadata keys", &key)?;
        let val = string_arg(&format!("metadata[{key:?}]"), &val)?;
        metadata.insert(key, val);
    }
    Ok(metadata)
}

fn extract_endpoints(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(value) = value.filter(|v| !v.is_none()) else { return Ok(Vec::new()) };
    if value.is_instance_of::<PyString>() || value.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "endpoints must be a sequence of str, not a single {} ({}); wrap it in a list",
            type_name(value),
            repr(value)
        )));
    }
    let mut endpoints = Vec::new();
    for item in value.try_iter().map_err(|_| {
        PyTypeError::new_err(format!("endpoints must be a sequence of str, not {}", type_name(value)))
    })? {
        let item = item?;
        endpoints.push(string_arg("each endpoint", &item)?);
    }
    Ok(endpoints)
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

fn repr(value: &Bound<'_, PyAny>) -> String {
    value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into())
}

/// `value` as a Rust string: a TypeError naming `name` for non-str values, an
/// InvalidServiceInstanceError for a str that is not valid Unicode (lone surrogates).
fn string_arg(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    match value.cast::<PyString>() {
        Ok(text) => text.to_str().map(str::to_owned).map_err(|_| {
            to_py_err(Error::InvalidInstance(
                format!(
                    "{name} must be valid Unicode text (got {}, which holds a lone surrogate)",
                    repr(value)
                )
                .into(),
            ))
        }),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{name} must be a str, not {} ({})",
            type_name(value),
            repr(value)
        ))),
    }
}

#[pymethods]
impl ServiceInstance {
    /// Build an instance. Nothing is validated here beyond types; `register()` checks
    /// the values (so values read from etcd, whatever they hold, can always be shown).
    ///
    /// >>> ServiceInstance(id="user-1", name="user-service", version="1.0.0",
    /// ...                 metadata={"zone": "a"}, endpoints=["grpc://127.0.0.1:9001"])
    #[new]
    #[pyo3(signature = (id, name, version = None, metadata = None, endpoints = None))]
    fn new(
        id: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        version: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        endpoints: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let version = match version {
            Some(v) if !v.is_none() => string_arg("version", v)?,
            _ => String::new(),
        };
        Ok(Self::wrap(Arc::new(core::ServiceInstance {
            id: string_arg("id", id)?,
            name: string_arg("name", name)?,
            version,
            metadata: extract_metadata(metadata)?,
            endpoints: extract_endpoints(endpoints)?,
        })))
    }

    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[getter]
    fn version(&self) -> &str {
        &self.inner.version
    }

    /// A read-only mapping of str to str.
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.metadata
            .get_or_try_init(py, || {
                let dict = PyDict::new(py);
                for (k, v) in &self.inner.metadata {
                    dict.set_item(k, v)?;
                }
                let proxy = MAPPING_PROXY.get_or_try_init(py, || {
                    py.import("types").and_then(|m| m.getattr("MappingProxyType")).map(Bound::unbind)
                })?;
                proxy.call1(py, (dict,))
            })
            .map(|m| m.clone_ref(py))
    }

    /// The endpoints, as a tuple of str.
    #[getter]
    fn endpoints(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        self.endpoints
            .get_or_try_init(py, || PyTuple::new(py, &self.inner.endpoints).map(Bound::unbind))
            .map(|t| t.clone_ref(py))
    }

    /// The value as stored in etcd: byte-identical to Go's `json.Marshal`.
    ///
    /// >>> ServiceInstance(id="a", name="s", endpoints=["grpc://h:1"]).to_json()
    /// b'{"id":"a","name":"s","version":"","metadata":null,"endpoints":["grpc://h:1"]}'
    fn to_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_json())
    }

    /// Decode a stored value as Go's decoder would (unknown fields ignored, names
    /// matched case-insensitively, nulls as defaults). Raises InvalidServiceInstanceError.
    ///
    /// >>> ServiceInstance.from_json(b'{"ID":"a","name":"s"}').id
    /// 'a'
    #[classmethod]
    fn from_json(_cls: &Bound<'_, pyo3::types::PyType>, data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let decoded = if let Ok(bytes) = data.cast::<PyBytes>() {
            core::ServiceInstance::from_json(bytes.as_bytes())
        } else if let Ok(text) = data.cast::<PyString>() {
            match text.to_str() {
                Ok(text) => core::ServiceInstance::from_json(text.as_bytes()),
                Err(_) => Err(Error::InvalidInstance(
                    "invalid service instance JSON: the str holds a lone surrogate, which is not Unicode text"
                        .into(),
                )),
            }
        } else if let Ok(bytes) = data.extract::<Vec<u8>>() {
            core::ServiceInstance::from_json(&bytes)
        } else {
            return Err(PyTypeError::new_err(format!(
                "from_json() takes bytes or str, not {}",
                type_name(data)
            )));
        };
        decoded.map(|i| Self::wrap(Arc::new(i))).into_py_result()
    }

    /// Check the instance as `register()` does: id and name non-empty without `/`, at
    /// least one endpoint, each `host:port` with an optional `grpc://`.
    /// Raises InvalidServiceInstanceError naming the bad value.
    ///
    /// >>> ServiceInstance(id="a", name="s", endpoints=["http://h:1"]).validate()
    /// Traceback (most recent call last):
    /// ...
    /// genesis_registry.errors.InvalidServiceInstanceError: ...
    fn validate(&self) -> PyResult<()> {
        self.inner.validate().into_py_result()
    }

    /// A plain dict (metadata a dict, endpoints a list), e.g. for JSON output.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("id", &self.inner.id)?;
        dict.set_item("name", &self.inner.name)?;
        dict.set_item("version", &self.inner.version)?;
        dict.set_item("metadata", self.inner.metadata.clone())?;
        dict.set_item("endpoints", self.inner.endpoints.clone())?;
        Ok(dict)
    }

    /// A copy with some fields changed, like `dataclasses.replace`.
    ///
    /// >>> ServiceInstance(id="a", name="s").replace(version="2").version
    /// '2'
    #[pyo3(signature = (*, id = None, name = None, version = None, metadata = None, endpoints = None))]
    fn replace(
        &self,
        id: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        version: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        endpoints: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut inner = core::ServiceInstance::clone(&self.inner);
        if let Some(id) = id {
            inner.id = string_arg("id", id)?;
        }
        if let Some(name) = name {
            inner.name = string_arg("name", name)?;
        }
        if let Some(version) = version {
            inner.version = string_arg("version", version)?;
        }
        if metadata.is_some() {
            inner.metadata = extract_metadata(metadata)?;
        }
        if endpoints.is_some() {
            inner.endpoints = extract_endpoints(endpoints)?;
        }
        Ok(Self::wrap(Arc::new(inner)))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let i = &self.inner;
        let metadata = self.inner.metadata.clone().into_pyobject(py)?.repr()?.to_string();
        let endpoints = self.endpoints(py)?.bind(py).repr()?.to_string();
        Ok(format!(
            "ServiceInstance(id={}, name={}, version={}, metadata={metadata}, endpoints={endpoints})",
            PyString::new(py, &i.id).repr()?,
            PyString::new(py, &i.name).repr()?,
            PyString::new(py, &i.version).repr()?,
        ))
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<ServiceInstance>() else {
            return Ok(py.NotImplemented());
        };
        let result = op.matches(self.inner.as_ref().cmp(other.get().inner.as_ref()));
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner.hash(&mut hasher);
        hasher.finish()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let this = slf.get();
        let args = (
            this.inner.id.clone(),
            this.inner.name.clone(),
            this.inner.version.clone(),
            this.inner.metadata.clone(),
            this.inner.endpoints.clone(),
        )
            .into_pyobject(py)?;
        Ok((slf.get_type().into_any(), args))
    }

    fn __copy__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __deepcopy__(slf: Py<Self>, _memo: &Bound<'_, PyAny>) -> Py<Self> {
        slf
    }
}

/// The gRPC target (`host:port`) of an instance endpoint, or `None` when the endpoint is
/// not one: the same grammar registration enforces.
#[pyfunction]
pub fn endpoint_target(endpoint: &str) -> Option<&str> {
    genesis_registry_core::endpoint_target(endpoint)
}
