//! Native mode for Python: a target configuration from Python values, and the process's
//! xDS server as Python sees it.

use std::time::Duration;

use genesis_registry_core::xds::{
    host, FailurePercentageEjection, OutlierDetection, Policy, SuccessRateEjection, TargetConfig,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::py::errors::{config_error, IntoPyResult};

/// `gr.OutlierDetection` as the Python side flattens it: the durations in seconds, the
/// percentage, then each ejection method's four numbers or None.
pub type OutlierFields = (f64, f64, f64, i64, Option<[i64; 4]>, Option<[i64; 4]>);

/// The configuration of a native target from `get_connection()`'s arguments.
pub fn target_config(
    policy: &str,
    hash_header: Option<&str>,
    outlier_detection: Option<OutlierFields>,
    zone: Option<String>,
) -> PyResult<TargetConfig> {
    let policy = Policy::from_name(policy, hash_header).into_py_result()?;
    let outlier_detection = outlier_detection.map(outliers).transpose()?;
    Ok(TargetConfig { policy, outlier_detection, zone })
}

fn outliers(fields: OutlierFields) -> PyResult<OutlierDetection> {
    let (interval, base, max, max_percent, success_rate, failure_percentage) = fields;
    let success_rate = success_rate
        .map(|[stdev_factor, enforcement, minimum_hosts, volume]| -> PyResult<SuccessRateEjection> {
            Ok(SuccessRateEjection {
                stdev_factor: count("success_rate.stdev_factor", stdev_factor)?,
                enforcement_percentage: count("success_rate.enforcement_percentage", enforcement)?,
                minimum_hosts: count("success_rate.minimum_hosts", minimum_hosts)?,
                request_volume: count("success_rate.request_volume", volume)?,
            })
        })
        .transpose()?;
    let failure_percentage = failure_percentage
        .map(|[threshold, enforcement, minimum_hosts, volume]| -> PyResult<FailurePercentageEjection> {
            Ok(FailurePercentageEjection {
                threshold: count("failure_percentage.threshold", threshold)?,
                enforcement_percentage: count("failure_percentage.enforcement_percentage", enforcement)?,
                minimum_hosts: count("failure_percentage.minimum_hosts", minimum_hosts)?,
                request_volume: count("failure_percentage.request_volume", volume)?,
            })
        })
        .transpose()?;
    let config = OutlierDetection {
        interval: seconds_of("interval", interval)?,
        base_ejection_time: seconds_of("base_ejection_time", base)?,
        max_ejection_time: seconds_of("max_ejection_time", max)?,
        max_ejection_percent: count("max_ejection_percent", max_percent)?,
        success_rate,
        failure_percentage,
    };
    config.validate().into_py_result()?;
    Ok(config)
}

fn seconds_of(field: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        config_error(format!(
            "outlier_detection.{field} must be a non-negative number of seconds (got {value})"
        ))
    })
}

fn count(field: &str, value: i64) -> PyResult<u32> {
    u32::try_from(value).map_err(|_| {
        config_error(format!("outlier_detection.{field} must be a whole number from 0 (got {value})"))
    })
}

/// The running xDS server's address (`host:port`) and counters, or None when none runs.
#[pyfunction]
pub fn xds_server<'py>(py: Python<'py>) -> PyResult<Option<(String, Bound<'py, PyDict>)>> {
    let Some((address, stats)) = host::running() else { return Ok(None) };
    let dict = PyDict::new(py);
    for (name, value) in stats.snapshot() {
        dict.set_item(name, value)?;
    }
    Ok(Some((address.to_string(), dict)))
}
