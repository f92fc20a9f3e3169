//! `RegistryCore`: the registry for Python, and the per-service tuples `get_service`
//! returns, built once per snapshot generation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use genesis_registry_core::{LeaseTime, Registry, RegistryConfig, ServiceCache};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::py::connector::{seconds, EtcdConnectorCore};
use crate::py::errors::{closed_error, to_py_err, IntoPyResult};
use crate::py::instance::ServiceInstance;
use crate::py::native::{target_config, OutlierFields};
use crate::py::runtime;
use crate::py::watch::WatchCore;

type Views = HashMap<String, Arc<ServiceView>, foldhash::fast::RandomState>;
type LeaseTuple = (String, i64, Option<i64>, Option<i64>);

fn lease_tuple(time: LeaseTime) -> LeaseTuple {
    (time.id, time.lease, time.granted_seconds, time.remaining_seconds)
}

struct CachedTuple {
    generation: u64,
    tuple: Py<PyTuple>,
}

/// A service's cache plus the Python tuple last built from it.
struct ServiceView {
    cache: Arc<ServiceCache>,
    tuple: ArcSwapOption<CachedTuple>,
}

impl ServiceView {
    /// The instances as a tuple of ServiceInstance, sorted by id. O(1) while the snapshot
    /// is unchanged; a rebuild reuses the Python objects of unchanged instances.
    fn tuple(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        let snapshot = self.cache.load();
        {
            // The fast path borrows the cached tuple without touching its reference count.
            let cached = self.tuple.load();
            if let Some(cached) = cached.as_deref() {
                if cached.generation == snapshot.generation {
                    return Ok(cached.tuple.clone_ref(py));
                }
            }
        }
        let previous = self.tuple.load_full();
        let old: Vec<Bound<'_, ServiceInstance>> = match previous.as_deref() {
            Some(cached) => cached
                .tuple
                .bind(py)
                .iter()
                .filter_map(|item| item.cast_into::<ServiceInstance>().ok())
                .collect(),
            None => Vec::new(),
        };
        let mut old = old.into_iter().peekable();
        let mut items: Vec<Bound<'_, PyAny>> = Vec::with_capacity(snapshot.instances.len());
        for instance in &snapshot.instances {
            while old.peek().is_some_and(|o| o.get().inner.id < instance.id) {
                old.next();
            }
            match old.peek() {
                Some(o) if Arc::ptr_eq(&o.get().inner, instance) => {
                    items.push(old.next().expect("peeked").into_any());
                }
                _ => items.push(Bound::new(py, ServiceInstance::wrap(Arc::clone(instance)))?.into_any()),
            }
        }
        let tuple = PyTuple::new(py, items)?.unbind();
        self.tuple.store(Some(Arc::new(CachedTuple {
            generation: snapshot.generation,
            tuple: tuple.clone_ref(py),
        })));
        Ok(tuple)
    }
}

#[pyclass(frozen, module = "genesis_registry._core")]
pub struct RegistryCore {
    core: Registry,
    /// Services read so far, by name. Copy-on-write: `get_service` never locks.
    views: ArcSwap<Views>,
    created_in: u64,
}

/// The namespace a registry configured with `namespace` builds its keys from (checks it):
/// the string as given, or the default when empty, as in the Go component.
#[pyfunction]
pub fn effective_namespace(namespace: &str) -> PyResult<String> {
    genesis_registry_core::effective_namespace(namespace).into_py_result()
}

/// The whole seconds of the lease a registration with `ttl` gets under a registry whose
/// default TTL is `default_ttl` (checks both, needs no connection).
#[pyfunction]
#[pyo3(signature = (ttl, default_ttl))]
pub fn lease_seconds(ttl: Option<f64>, default_ttl: f64) -> PyResult<i64> {
    let default_ttl = optional_ttl(Some(default_ttl))?.unwrap_or_default();
    genesis_registry_core::lease_seconds(optional_ttl(ttl)?, default_ttl).into_py_result()
}

fn optional_ttl(ttl: Option<f64>) -> PyResult<Option<Duration>> {
    match ttl {
        None => Ok(None),
        Some(t) => Duration::try_from_secs_f64(t).map(Some).map_err(|_| {
            to_py_err(genesis_registry_core::Error::InvalidTtl(format!(
                "TTL must be a non-negative number of seconds (got {t})"
            )))
        }),
    }
}

impl RegistryCore {
    fn check(&self) -> PyResult<&Registry> {
        runtime::ensure_same_process(self.created_in, "Registry")?;
        if self.core.is_closed() {
            return Err(closed_error("registry is closed".into()));
        }
        Ok(&self.core)
    }

    fn view(&self, name: &str) -> Option<Arc<ServiceView>> {
        self.views.load().get(name).cloned()
    }

    fn remember(&self, cache: Arc<ServiceCache>) -> Arc<ServiceView> {
        let name = cache.name().to_string();
        let view = Arc::new(ServiceView { cache, tuple: ArcSwapOption::empty() });
        self.views.rcu(|views| {
            let mut views = Views::clone(views);
            views.entry(name.clone()).or_insert_with(|| Arc::clone(&view));
            views
        });
        self.view(&name).unwrap_or(view)
    }
}

#[pymethods]
impl RegistryCore {
    #[new]
    fn new(
        connector: &EtcdConnectorCore,
        namespace: String,
        default_ttl: f64,
        retry_interval: f64,
    ) -> PyResult<Self> {
        let config = RegistryConfig {
            namespace,
            default_ttl: seconds("default_ttl", default_ttl)?,
            retry_interval: seconds("retry_interval", retry_interval)?,
        };
        let core = Registry::new(connector.check()?, config).into_py_result()?;
        Ok(Self { core, views: ArcSwap::default(), created_in: runtime::generation() })
    }

    #[getter]
    fn id(&self) -> u64 {
        self.core.id()
    }

    #[getter]
    fn namespace(&self) -> &str {
        self.core.namespace()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    fn key_of(&self, name: &str, id: &str) -> String {
        self.core.key_of(name, id)
    }

    #[pyo3(signature = (instance, ttl=None))]
    fn register(&self, py: Python<'_>, instance: &ServiceInstance, ttl: Option<f64>) -> PyResult<()> {
        let core = self.check()?.clone();
        let (instance, ttl) = (instance.inner.as_ref().clone(), optional_ttl(ttl)?);
        runtime::block_on(py, async move { core.register(instance, ttl).await })?.into_py_result()
    }

    #[pyo3(signature = (instance, ttl=None))]
    fn register_async<'py>(
        &self,
        py: Python<'py>,
        instance: &ServiceInstance,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        let (instance, ttl) = (instance.inner.as_ref().clone(), optional_ttl(ttl)?);
        runtime::into_awaitable(py, async move { core.register(instance, ttl).await })
    }

    #[pyo3(signature = (instances, ttl=None))]
    fn register_many(
        &self,
        py: Python<'_>,
        instances: Vec<PyRef<'_, ServiceInstance>>,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        let core = self.check()?.clone();
        let (instances, ttl) =
            (instances.iter().map(|i| i.inner.as_ref().clone()).collect(), optional_ttl(ttl)?);
        runtime::block_on(py, async move { core.register_many(instances, ttl).await })?.into_py_result()
    }

    #[pyo3(signature = (instances, ttl=None))]
    fn register_many_async<'py>(
        &self,
        py: Python<'py>,
        instances: Vec<PyRef<'_, ServiceInstance>>,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        let (instances, ttl) =
            (instances.iter().map(|i| i.inner.as_ref().clone()).collect(), optional_ttl(ttl)?);
        runtime::into_awaitable(py, async move { core.register_many(instances, ttl).await })
    }

    fn deregister(&self, py: Python<'_>, id: String) -> PyResult<()> {
        let core = self.check()?.clone();
        runtime::block_on(py, async move { core.deregister(&id).await })?.into_py_result()
    }

    fn deregister_async<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move { core.deregister(&id).await })
    }

    /// Every service in the namespace with its instance count, sorted by name.
    fn list_services(&self, py: Python<'_>) -> PyResult<Vec<(String, u64)>> {
        let core = self.check()?.clone();
        runtime::block_on(py, async move { core.list_services().await })?.into_py_result()
    }

    fn list_services_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move { core.list_services().await })
    }

    /// Per instance of service `name`: (id, lease, granted seconds, remaining seconds); the
    /// times are None without a live lease.
    fn lease_times(&self, py: Python<'_>, name: String) -> PyResult<Vec<LeaseTuple>> {
        let core = self.check()?.clone();
        let times = runtime::block_on(py, async move { core.lease_times(&name).await })?.into_py_result()?;
        Ok(times.into_iter().map(lease_tuple).collect())
    }

    fn lease_times_async<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move {
            core.lease_times(&name).await.map(|times| times.into_iter().map(lease_tuple).collect::<Vec<_>>())
        })
    }

    /// Deletes any instance's key (deregisters it if this registry registered it).
    fn remove(&self, py: Python<'_>, name: String, id: String) -> PyResult<bool> {
        let core = self.check()?.clone();
        runtime::block_on(py, async move { core.remove(&name, &id).await })?.into_py_result()
    }

    fn remove_async<'py>(&self, py: Python<'py>, name: String, id: String) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move { core.remove(&name, &id).await })
    }

    /// Per watched service: (name, instances, age in seconds, last event lag in µs, max lag in µs).
    fn service_stats(&self) -> Vec<(String, usize, f64, u64, u64)> {
        self.core
            .service_stats()
            .into_iter()
            .map(|s| {
                let lag_last = s.event_lag_last.as_micros() as u64;
                (s.name, s.instances, s.age.as_secs_f64(), lag_last, s.event_lag_max.as_micros() as u64)
            })
            .collect()
    }

    fn registered_ids(&self) -> Vec<String> {
        self.core.registered_ids()
    }

    /// The instances of service `name`, sorted by id. The first call for a service reads it
    /// from etcd and starts watching it; later calls answer from memory in constant time.
    /// While etcd is unreachable the last known instances are returned. (This is what
    /// `Registry.get_service` is: the public name reaches it with no Python in between.)
    fn get_service(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyTuple>> {
        self.check()?;
        if let Some(view) = self.views.load().get(name) {
            return view.tuple(py);
        }
        let core = self.core.clone();
        let owned = name.to_string();
        let cache = runtime::block_on(py, async move { core.service(&owned).await })?.into_py_result()?;
        self.remember(cache).tuple(py)
    }

    /// The service's instances if it was read before, else None; never blocks.
    fn cached_service(&self, py: Python<'_>, name: &str) -> PyResult<Option<Py<PyTuple>>> {
        let core = self.check()?;
        let view = match self.view(name) {
            Some(view) => view,
            None => match core.ready_service(name) {
                Some(cache) => self.remember(cache),
                None => return Ok(None),
            },
        };
        view.tuple(py).map(Some)
    }

    /// Awaitable that completes once the service's first snapshot is available, after
    /// which `cached_service` answers.
    fn load_service_async<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move { core.service(&name).await.map(|_| ()) })
    }

    /// Events of service `name` (first a PUT per instance, sorted by id); blocks for the
    /// service's first read.
    #[pyo3(signature = (name, capacity=1024))]
    fn watch(&self, py: Python<'_>, name: String, capacity: usize) -> PyResult<WatchCore> {
        let core = self.check()?.clone();
        let subscriber =
            runtime::block_on(py, async move { core.watch(&name, capacity).await })?.into_py_result()?;
        Ok(WatchCore { subscriber, created_in: self.created_in })
    }

    #[pyo3(signature = (name, capacity=1024))]
    fn watch_async<'py>(
        &self,
        py: Python<'py>,
        name: String,
        capacity: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.check()?.clone();
        let created_in = self.created_in;
        runtime::into_awaitable(py, async move {
            core.watch(&name, capacity).await.map(|subscriber| WatchCore { subscriber, created_in })
        })
    }

    /// (target, xDS server address) of service `name` in native mode.
    #[pyo3(signature = (name, policy, hash_header=None, outlier_detection=None, zone=None))]
    fn native_target(
        &self,
        py: Python<'_>,
        name: String,
        policy: &str,
        hash_header: Option<&str>,
        outlier_detection: Option<OutlierFields>,
        zone: Option<String>,
    ) -> PyResult<(String, String)> {
        let config = target_config(policy, hash_header, outlier_detection, zone)?;
        let core = self.check()?.clone();
        let target = runtime::block_on(py, async move { core.native_target(&name, config).await })?;
        let target = target.into_py_result()?;
        Ok((target.target, target.server.to_string()))
    }

    #[pyo3(signature = (name, policy, hash_header=None, outlier_detection=None, zone=None))]
    fn native_target_async<'py>(
        &self,
        py: Python<'py>,
        name: String,
        policy: &str,
        hash_header: Option<&str>,
        outlier_detection: Option<OutlierFields>,
        zone: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let config = target_config(policy, hash_header, outlier_detection, zone)?;
        let core = self.check()?.clone();
        runtime::into_awaitable(py, async move {
            let target = core.native_target(&name, config).await?;
            Ok((target.target, target.server.to_string()))
        })
    }

    /// Revokes leases and ends watches; idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.created_in != runtime::generation() {
            return Ok(());
        }
        let core = self.core.clone();
        runtime::block_on(py, async move { core.close().await })?;
        self.views.store(Arc::default());
        Ok(())
    }

    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::ensure_same_process(self.created_in, "Registry")?;
        let core = self.core.clone();
        runtime::into_awaitable(py, async move {
            core.close().await;
            Ok(())
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.core.stats() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}
